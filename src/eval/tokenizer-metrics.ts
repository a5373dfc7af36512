import { codebookStats, type VitVqgan } from '../model/vit-vqgan.ts';

/** How well the image tokenizer round-trips real images. */
export interface TokenizerMetrics {
  images: number;
  /** Mean over images of 10 log10(255^2 / MSE) in dB (an exact reconstruction counts as 100 dB). */
  psnr: number;
  /** Share of codes used at least once over these images' tokens. */
  codebookUsage: number;
  /** exp(entropy) of the code histogram: the number of codes in effective use. */
  codebookPerplexity: number;
}

/** Peak signal-to-noise ratio of one 8-bit image against its reconstruction, in dB (capped at 100). */
export function psnr(a: Uint8Array, b: Uint8Array): number {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i]! - b[i]!) ** 2;
  if (se === 0) return 100;
  return Math.min(100, 10 * Math.log10((255 * 255) / (se / a.length)));
}

/**
 * Encodes and decodes `images` (RGB bytes of the tokenizer's size) `chunk` at a time; returns the
 * metrics, every image's tokens (for the held-out token loss) and its reconstruction.
 */
export function measureTokenizer(
  vq: VitVqgan,
  params: Float32Array,
  images: readonly Uint8Array[],
  chunk = 64,
): { metrics: TokenizerMetrics; tokens: Int32Array[]; reconstructions: Uint8Array[] } {
  const counts = new Float32Array(vq.config.codebookSize);
  const tokens: Int32Array[] = [];
  const reconstructions: Uint8Array[] = [];
  let psnrSum = 0;
  const n = vq.tokens;
  for (let s = 0; s < images.length; s += chunk) {
    const part = images.slice(s, s + chunk);
    const all = new Uint8Array(part.reduce((k, im) => k + im.length, 0));
    let o = 0;
    for (const im of part) {
      all.set(im, o);
      o += im.length;
    }
    const ids = vq.encode(params, all, part.length);
    const recon = vq.decode(params, ids, part.length);
    const per = recon.length / part.length;
    part.forEach((im, i) => {
      psnrSum += psnr(im, recon.subarray(i * per, (i + 1) * per));
      tokens.push(ids.slice(i * n, (i + 1) * n));
      reconstructions.push(recon.slice(i * per, (i + 1) * per));
    });
    for (const id of ids) counts[id]! += 1;
  }
  const { usage, perplexity } = codebookStats(counts);
  return { metrics: { images: images.length, psnr: psnrSum / Math.max(1, images.length), codebookUsage: usage, codebookPerplexity: perplexity }, tokens, reconstructions };
}
