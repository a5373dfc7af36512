import { z } from 'zod';

/**
 * The super-resolution network (`model.upsampler`): WDSR-style residual blocks with wide
 * activations working at the low resolution, then a pixel shuffle; no text input. It enlarges
 * the tokenizer's images `scale` times.
 */
export const upsamplerSchema = z.strictObject({
  /** Enlargement factor (Parti: 4, 256 -> 1024). */
  scale: z.number().int().min(2).max(8).default(4),
  /** Channels of the residual body. */
  filters: z.number().int().min(4).max(256).default(32),
  /** Residual blocks. */
  blocks: z.number().int().min(1).max(64).default(4),
  /** Width multiplier before each block's ReLU (WDSR's wide activation). */
  expansion: z.number().int().min(1).max(16).default(4),
  /** Each block's residual is multiplied by this (stabilises deep bodies). */
  residualScale: z.number().positive().max(1).default(1),
  /**
   * Side of the original images the upsampler stage trains on (the low-resolution inputs are
   * these, box-downsampled `scale` times). Default: tokenizer.imageSize * scale. With a shard
   * source it must be the shards' image size.
   */
  trainImageSize: z.number().int().min(8).optional(),
});
export type UpsamplerConfig = z.infer<typeof upsamplerSchema>;
