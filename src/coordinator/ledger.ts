/**
 * The exactly-once ledger (test mode): one JSON line per committed optimizer step naming the
 * samples it consumed. Written by the coordinator at the moment it commits a step, so a redone step
 * appears once; a coordinator that recovers from checkpoint step c drops the lines after c (those
 * updates were rolled back) before it goes on.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** One committed optimizer step. */
export interface LedgerEntry {
  step: number;
  /** Every sample of the step as [data epoch, sample index in the data set]. */
  samples: [number, number][];
  /** World size that computed it. */
  worldSize: number;
  /** The gradient was not finite: the update was skipped on every rank (the samples are still consumed). */
  skipped: boolean;
}

export class Ledger {
  constructor(readonly file: string) {
    mkdirSync(dirname(file), { recursive: true });
  }

  append(entry: LedgerEntry): void {
    appendFileSync(this.file, `${JSON.stringify(entry)}\n`);
  }

  /** Keeps the entries of steps < `step` (the state after `step` optimizer steps). */
  truncateTo(step: number): void {
    const kept = readLedger(this.file).filter((e) => e.step < step);
    writeFileSync(this.file, kept.map((e) => `${JSON.stringify(e)}\n`).join(''));
  }
}

/** Reads a ledger; a torn last line (the coordinator was killed while writing it) is ignored. */
export function readLedger(file: string): LedgerEntry[] {
  if (!existsSync(file)) return [];
  const out: LedgerEntry[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as LedgerEntry);
    } catch {
      // only a torn last line can fail to parse
    }
  }
  return out;
}
