import { CollectiveNode } from './collective-node.ts';
import { collectiveContractSuite } from './collective-contract.ts';
import { InMemoryHub } from './in-memory-transport.ts';

collectiveContractSuite(
  'in-memory',
  async (count, options) => {
    const hub = new InMemoryHub();
    return Array.from({ length: count }, (_, i) => new CollectiveNode(hub.transport(), options(i)));
  },
  [1, 2, 3, 4, 5, 6, 7, 8],
);
