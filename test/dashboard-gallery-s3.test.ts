// The gallery kept in an s3:// checkpoint store (s3rver): a coordinator's dashboard saves each
// generation under gallery/<step>/ beside the checkpoints, checkpoint retention on the same
// store leaves it alone, and a new coordinator dashboard on that s3:// URL (as a restart opens
// it, credentials and endpoint from the environment) serves the earlier samples at once. Saves
// prune the steps that no longer fit in `keep`.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PNG } from 'pngjs';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { dashboardSchema } from '../src/config/dashboard-schema.ts';
import { galleryResponseSchema } from '../src/dashboard/api-schema.ts';
import { startCoordinatorDashboard } from '../src/dashboard/coordinator-bridge.ts';
import { scriptedCoordinator } from '../src/dashboard/coordinator-source-fixture.ts';
import { GalleryArchive, type GallerySampleData } from '../src/dashboard/gallery-archive.ts';
import { commitManifest, writeCheckpointObject } from '../src/storage/checkpoint-commit.ts';
import { listCheckpointSteps } from '../src/storage/checkpoint-load.ts';
import { openStore } from '../src/storage/open-store.ts';

let server: S3rverHandle;
before(async () => {
  server = await startS3rver();
  // What a coordinator in a cluster reads its store's endpoint and key pair from.
  process.env.AWS_ENDPOINT_URL_S3 = server.endpoint;
  process.env.AWS_ACCESS_KEY_ID = server.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = server.credentials.secretAccessKey;
  process.env.AWS_REGION = server.region;
});
after(async () => {
  await server?.stop();
});

function png(level: number): Uint8Array {
  const p = new PNG({ width: 4, height: 4 });
  for (let i = 0; i < 16; i++) p.data.set([level, 0, 255 - level, 255], i * 4);
  return new Uint8Array(PNG.sync.write(p));
}

function samples(step: number): GallerySampleData[] {
  return ['a red circle', 'two squares'].map((prompt, i) => ({
    prompt,
    png: png(step + i),
    width: 4,
    height: 4,
    attention: [{ token: prompt[0]!, png: png(step + i + 100) }],
  }));
}

test('s3://: the gallery survives checkpoint retention and a restarted coordinator dashboard serves it', { timeout: 60_000 }, async () => {
  const url = `s3://${server.bucket}/job-gallery`;
  const store = openStore(url);
  const commit = async (step: number) => {
    const ref = await writeCheckpointObject(store, step, 'params.bin', new Float32Array(8));
    await commitManifest(store, { step, worldSize: 1, configHash: 'h', config: {}, cursor: null, rng: null, objects: [ref] }, { keep: 2 });
  };
  try {
    // keep 3 (two items a step): after step 20, step 5 can no longer be shown and is pruned.
    const archive = new GalleryArchive({ store: openStore(url), configHash: 'h', keep: 3 });
    archive.save(5, samples(5), 5000);
    for (const step of [10, 20]) {
      await commit(step);
      archive.save(step, samples(step), step * 1000);
    }
    await archive.close();
    assert.deepEqual(archive.counts, { saved: 3, failed: 0 });
    assert.deepEqual(archive.pruning.failed, 0);
    const galleryKeys = (await store.list('gallery/')).map((o) => o.key);
    assert.deepEqual([...new Set(galleryKeys.map((k) => k.split('/')[1]))], ['000000000010', '000000000020'], galleryKeys.join(' '));
    assert.equal(galleryKeys.length, 2 * (1 + 2 * 2), 'per step: the index, two samples, a map each');
    await commit(30); // keep 2: step 10's checkpoint goes, its samples stay
    assert.deepEqual(await listCheckpointSteps(store), [20, 30]);
    // A save cut short (PNGs, no index) is not there for the reader.
    await store.put('gallery/000000000030/x/0.png', png(1));

    const { source } = scriptedCoordinator({ step: 30, epoch: 0, workers: 1, phase: { kind: 'waiting-for-workers' } });
    const config = dashboardSchema.parse({ port: 0, host: '127.0.0.1', gallery: { prompts: ['a red circle', 'two squares'], everySteps: 10, keep: 3 } });
    const dash = await startCoordinatorDashboard(source, config, { name: 'j', stage: 'parti', checkpointStore: url });
    try {
      const items = galleryResponseSchema.parse(await (await fetch(`${dash.url}api/gallery`, { signal: AbortSignal.timeout(10_000) })).json()).items;
      // keep 3: the newest three items, oldest first.
      assert.deepEqual(items.map((i) => [i.step, i.prompt, i.time]), [[10, 'two squares', 10_000], [20, 'a red circle', 20_000], [20, 'two squares', 20_000]]);
      for (const [n, i] of items.entries()) {
        const want = samples(i.step)[i.prompt === 'a red circle' ? 0 : 1]!;
        const got = Buffer.from(await (await fetch(new URL(i.image, dash.url), { signal: AbortSignal.timeout(10_000) })).arrayBuffer());
        assert.deepEqual(got, Buffer.from(want.png), `item ${n}'s PNG`);
        const map = Buffer.from(await (await fetch(new URL(i.attention[0]!.image, dash.url), { signal: AbortSignal.timeout(10_000) })).arrayBuffer());
        assert.deepEqual(map, Buffer.from(want.attention![0]!.png), `item ${n}'s attention map`);
      }
      assert.doesNotMatch(await dash.metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="(read|write)"\} [1-9]/m);
    } finally {
      await dash.close();
    }
  } finally {
    await store.close();
  }
});
