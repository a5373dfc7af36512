import { collectiveContractSuite } from './collective-contract.ts';
import { createGrpcCollectiveNode } from './grpc-transport.ts';

// The same suite as the in-memory transport, with every node a gRPC server on 127.0.0.1 (one
// process; test/collective-grpc.test.ts runs ranks as separate processes).
collectiveContractSuite(
  'grpc',
  (count, options) => Promise.all(Array.from({ length: count }, (_, i) => createGrpcCollectiveNode({ listen: '127.0.0.1:0', ...options(i) }))),
  [1, 2, 3, 4],
);
