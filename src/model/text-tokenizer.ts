import { log } from '../observability/log.ts';

/** Byte ids are 0..255; then the three special tokens. */
export const PAD_ID = 256;
export const BOS_ID = 257;
export const EOS_ID = 258;

/** A caption as token ids. */
export interface EncodedText {
  /** `maxLength` ids: BOS, bytes, EOS, then PAD. */
  ids: Int32Array;
  /** 1 where a real token (BOS, byte or EOS) sits, 0 for PAD. */
  mask: Uint8Array;
  /** Whether the caption was cut to fit. */
  truncated: boolean;
}

/**
 * Byte-level UTF-8 tokenizer: needs no training and takes any Unicode. A caption longer than
 * `maxLength - 2` bytes is cut (never inside a UTF-8 character) and a warning is logged.
 */
export class TextTokenizer {
  constructor(readonly maxLength: number) {}

  encode(text: string): EncodedText {
    const bytes = new TextEncoder().encode(text);
    const room = this.maxLength - 2;
    let n = bytes.length;
    const truncated = n > room;
    if (truncated) {
      n = room;
      // Step back to a character boundary: continuation bytes are 10xxxxxx.
      while (n > 0 && (bytes[n]! & 0xc0) === 0x80) n--;
      log.warn({ bytes: bytes.length, maxLength: this.maxLength }, `caption truncated to ${n} of ${bytes.length} bytes: "${text.slice(0, 40)}…"`);
    }
    const ids = new Int32Array(this.maxLength).fill(PAD_ID);
    const mask = new Uint8Array(this.maxLength);
    ids[0] = BOS_ID;
    for (let i = 0; i < n; i++) ids[i + 1] = bytes[i]!;
    ids[n + 1] = EOS_ID;
    mask.fill(1, 0, n + 2);
    return { ids, mask, truncated };
  }

  /** Ids back to text: byte ids between BOS and EOS; PAD and special tokens are dropped. */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === EOS_ID) break;
      if (id < 256) bytes.push(id);
    }
    return new TextDecoder().decode(new Uint8Array(bytes));
  }
}
