// Nesting depth of client JSON, measured without recursion: a body nested 100k levels deep is cheap to refuse, and
// never reaches code that walks it (JSON.stringify, an estimator, a framework's own walk) to overflow the stack.

/** The nesting depth vllm-kit's own walks accept, and the gateway's default limit for request bodies. */
export const MAX_JSON_DEPTH = 64;

/**
 * True when the JSON text (UTF-8 bytes or a string) nests objects and arrays more than `maxDepth` deep. A byte scan
 * (brackets outside strings), linear and without recursion; it does not validate the JSON, so run it before
 * `JSON.parse` and refuse the body with a 400 when it says true.
 *
 * @example
 * if (exceedsJsonDepth(body, MAX_JSON_DEPTH)) return res.status(400).json({ error: { message: 'nested too deep' } });
 * const parsed = JSON.parse(body.toString('utf8'));
 */
export function exceedsJsonDepth(text: Uint8Array | string, maxDepth: number = MAX_JSON_DEPTH): boolean {
  const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  let depth = 0;
  const length = bytes.length;
  for (let i = 0; i < length; i++) {
    const c = bytes[i]!;
    if (c === 0x22 /* " */) {
      // Skip the string: its brackets are text.
      for (i++; i < length; i++) {
        const s = bytes[i]!;
        if (s === 0x5c /* \ */) i++;
        else if (s === 0x22) break;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > maxDepth) return true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return false;
}

/**
 * True when a parsed value nests objects and arrays more than `maxDepth` deep (an iterative walk that stops as soon as
 * it knows). For values that did not come through {@link exceedsJsonDepth}.
 */
export function valueExceedsDepth(value: unknown, maxDepth: number = MAX_JSON_DEPTH): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const stack: [unknown, number][] = [[value, 1]];
  let visited = 0;
  while (stack.length > 0) {
    const [current, depth] = stack.pop()!;
    if (depth > maxDepth) return true;
    // A very wide value is walked only so far: past this many nodes it is called too deep to be safe to print.
    if (++visited > 100_000) return true;
    const children = Array.isArray(current) ? current : Object.values(current as object);
    for (const child of children) {
      if (typeof child === 'object' && child !== null) stack.push([child, depth + 1]);
    }
  }
  return false;
}

/** `JSON.stringify` that never throws: a value nested too deep (or unprintable) becomes `fallback`. */
export function safeJsonStringify(value: unknown, fallback = '"[nested too deep]"'): string {
  if (valueExceedsDepth(value)) return fallback;
  try {
    return JSON.stringify(value) ?? fallback;
  } catch {
    return fallback;
  }
}
