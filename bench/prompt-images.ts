// Shared by the prompt-agreement benches: images generated for a list of prompts, 8 prompts per
// batch, with the probe's target labels of each image's prompt.
import type { Generator } from '../src/generate/generator.ts';
import type { Probe } from '../src/eval/probe.ts';

export async function promptImages(
  gen: Generator,
  probe: Probe,
  prompts: readonly string[],
  settings: Parameters<Generator['generate']>[1],
): Promise<{ images: Uint8Array[]; targets: number[][] }> {
  const images: Uint8Array[] = [];
  const targets: number[][] = [];
  for (let i = 0; i < prompts.length; i += 8) {
    const out = await gen.generate(prompts.slice(i, i + 8).map((prompt, k) => ({ prompt, promptIndex: i + k })), settings);
    for (const p of out)
      for (const im of p.images) {
        images.push(im.image);
        targets.push(probe.scheme.labelsOf(p.prompt)!);
      }
  }
  return { images, targets };
}
