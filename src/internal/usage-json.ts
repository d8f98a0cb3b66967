// OpenAI-style `usage` objects read out of response text without parsing the response: shared by the usage meter
// (key budgets) and the client's telemetry. Texts are latin1 (one character per byte), as both search them.

export const USAGE_KEY = '"usage":';

/** Where the JSON value starting at `start` ends (an object or a literal), or -1 when it is cut. */
export function jsonValueEnd(text: string, start: number): number {
  if (text.charCodeAt(start) !== 0x7b /* { */) {
    let i = start;
    while (i < text.length && text.charCodeAt(i) !== 0x2c /* , */ && text.charCodeAt(i) !== 0x7d /* } */) i++;
    return i < text.length ? i : -1;
  }
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22 /* " */) inString = true;
    else if (c === 0x7b) depth++;
    else if (c === 0x7d && --depth === 0) return i + 1;
  }
  return -1;
}

/** A non-negative safe integer, or undefined: a malformed usage object is ignored, never trusted or thrown on. */
function tokenCount(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** Reads `prompt_tokens`/`completion_tokens` from a usage value's text; undefined when absent or malformed. */
export function parseUsage(text: string): { prompt: number; completion: number } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const usage = value as Record<string, unknown>;
  const prompt = tokenCount(usage.prompt_tokens);
  // Embeddings report no completion tokens.
  const completion = usage.completion_tokens === undefined ? 0 : tokenCount(usage.completion_tokens);
  if (prompt === undefined || completion === undefined) return undefined;
  return { prompt, completion };
}

/**
 * The text of the last `"usage":{…}` value: a JSON body's (the top-level usage comes after the choices, and a quote
 * inside a string is escaped, so the last one is its own), a stream's final usage chunk, or the last of vLLM's
 * continuous usage. Undefined when there is none or it is cut.
 */
export function lastUsageText(text: string): string | undefined {
  const at = text.lastIndexOf(USAGE_KEY);
  if (at === -1 || text.charCodeAt(at + USAGE_KEY.length) !== 0x7b) return undefined;
  const stop = jsonValueEnd(text, at + USAGE_KEY.length);
  return stop === -1 ? undefined : text.slice(at + USAGE_KEY.length, stop);
}
