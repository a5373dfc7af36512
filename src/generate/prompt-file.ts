import { readFile } from 'node:fs/promises';
import { PartiError } from '../errors.ts';

/** Prompts read from a file. */
export interface PromptFile {
  prompts: string[];
  /** `lines`: one prompt per line; `tsv`: the `Prompt` column of a tab-separated table (PartiPrompts). */
  format: 'lines' | 'tsv';
}

/**
 * Parses a prompt file: a TSV whose header row has a `Prompt` column (as PartiPrompts.tsv), or
 * plain text with one prompt per line. Blank lines are skipped (an empty prompt is given on the
 * command line instead); a UTF-8 BOM and CR line ends are accepted.
 */
export function parsePrompts(text: string, source = 'prompts'): PromptFile {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const header = lines[0]!.split('\t');
  const col = header.findIndex((h) => h.trim().toLowerCase() === 'prompt');
  if (header.length > 1 && col >= 0) {
    const prompts: string[] = [];
    lines.slice(1).forEach((line) => {
      if (line.trim() === '') return;
      const cell = line.split('\t')[col];
      if (cell === undefined) return;
      prompts.push(cell.trim());
    });
    if (prompts.length === 0) throw new PartiError('usage', `--prompts: ${source} has a Prompt column but no rows`);
    return { prompts, format: 'tsv' };
  }
  const prompts = lines.map((l) => l.trim()).filter((l) => l !== '');
  if (prompts.length === 0) throw new PartiError('usage', `--prompts: ${source} has no prompts`);
  return { prompts, format: 'lines' };
}

/** Reads and parses a prompt file; a missing or unreadable file is a one-line usage error. */
export async function readPromptFile(path: string): Promise<PromptFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PartiError('usage', `--prompts: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parsePrompts(text, path);
}

/** A folder name for prompt i: `0007-a-red-circle-above` (index first, so folders sort in file order). */
export function promptFolderName(index: number, prompt: string): string {
  const slug = prompt
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 48)
    .replace(/-+$/, '');
  return `${String(index).padStart(4, '0')}${slug ? `-${slug}` : ''}`;
}
