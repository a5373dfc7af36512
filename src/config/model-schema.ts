import { z } from 'zod';
import { headsDivideDModel, transformerSchema, transformerShape } from './transformer-schema.ts';
import { upsamplerSchema } from './upsampler-schema.ts';

/** Byte-level text tokenizer: 256 byte ids plus PAD, BOS, EOS. */
export const BYTE_VOCAB_MIN = 259;

/** The ViT-VQGAN image tokenizer. */
export const imageTokenizerSchema = z
  .strictObject({
    /** Square image side in pixels. */
    imageSize: z.number().int().min(4),
    /** Square patch side in pixels; must divide imageSize. One patch is one image token. */
    patchSize: z.number().int().min(1),
    channels: z.number().int().min(1).max(4).default(3),
    encoder: transformerSchema,
    decoder: transformerSchema,
    /** Number of codes in the codebook (Parti: 8192). */
    codebookSize: z.number().int().min(2),
    /** Dimension of the low-dimensional lookup space (ViT-VQGAN: 8-32). */
    codeDim: z.number().int().min(2).max(256),
    /** Commitment loss weight. */
    beta: z.number().min(0).default(0.25),
    losses: z
      .strictObject({
        l2: z.number().min(0).default(1),
        logitLaplace: z.number().min(0).default(0),
        adversarial: z
          .strictObject({
            weight: z.number().min(0).default(0),
            /** Step at which the discriminator and its loss start. */
            startStep: z.number().int().min(0).default(0),
          })
          .prefault({}),
        perceptual: z
          .strictObject({
            weight: z.number().min(0).default(0),
            /** A tfjs layers model (model.json path or URL) whose features define the loss. */
            network: z.string().nullable().default(null),
          })
          .prefault({}),
      })
      .prefault({}),
    /**
     * Training steps during which the decoder reads the encoder's continuous (l2-normalized)
     * outputs instead of their nearest codes; the codebook still follows them through the
     * codebook loss (and dead-code re-seeding). Without this warm-up a small tokenizer settles on
     * codes that carry where a shape is but not its colour. Absent = 0 (quantize from the start);
     * left out of the parsed config when absent so existing configs keep their hash.
     */
    quantizeFromStep: z.number().int().min(0).optional(),
    /**
     * What a patch's code may depend on. `image` (ViT-VQGAN; the default): the encoder adds learned
     * positions and attends across the whole image, so one patch's code depends on where it is and
     * on the rest of the image (an all-black image is a different code at every position). `patch`:
     * each patch is encoded alone (no positions, attention only to itself), so equal patches get
     * equal codes anywhere in any image and the decoder (still global) learns one code per visual
     * piece instead of one per piece and place. Absent = `image`; left out of the parsed config when
     * absent so existing configs keep their hash.
     */
    encoderScope: z.enum(['image', 'patch']).optional(),
    /** Re-seed codes unused for this many steps from recent encoder outputs; 0 turns it off. */
    deadCodeSteps: z.number().int().min(0).default(100),
  })
  .refine((t) => t.imageSize % t.patchSize === 0, {
    message: 'patchSize must divide imageSize',
    path: ['patchSize'],
  });
export type ImageTokenizerConfig = z.infer<typeof imageTokenizerSchema>;

export const modelSchema = z.strictObject({
  /** The text encoder. */
  text: headsDivideDModel(
    z.strictObject({
      ...transformerShape,
      /** Text vocabulary size (byte-level needs >= 259; the paper's SentencePiece has 16000). */
      vocabSize: z.number().int().min(BYTE_VOCAB_MIN),
      /** Text tokens per caption, including BOS/EOS; longer text is truncated with a warning. */
      maxLength: z.number().int().min(2),
    }),
  ),
  /** The image-token decoder (causal self-attention, cross-attention to the text). */
  image: transformerSchema,
  /** The ViT-VQGAN that turns images into tokens and back. */
  tokenizer: imageTokenizerSchema,
  /** Probability that a training caption is replaced by the empty caption (for guidance). */
  conditionDropout: z.number().min(0).max(1).default(0.1),
  /** The super-resolution network of the upsampler stage (defaults apply when absent). */
  upsampler: upsamplerSchema.optional(),
});
export type ModelConfig = z.infer<typeof modelSchema>;
