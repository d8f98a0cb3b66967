// Deterministic "model" output: seeded random numbers, token text, prompt token counts and embeddings.

/** mulberry32: a tiny, fast, well-distributed 32-bit PRNG. Returns floats in [0, 1). */
export function createRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a over a string, mixed with a seed: the same prompt and seed always give the same output. */
export function hashString(text: string, seed: number): number {
  let hash = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

// Each token is one word with its leading space, as BPE vocabularies mostly are.
const WORDS =
  'the a of to and in is that it for on with as was at by an be this from or are have not but can which you all they we one more will has their about if would there so what when into some could them other than its then also only time these may like over such new most well after first use because how through'.split(
    ' ',
  );
export const VOCABULARY: readonly string[] = WORDS.map((word) => ` ${word}`);

/** Token texts for one generated sequence. */
export function generateTokens(count: number, random: () => number): string[] {
  const tokens = new Array<string>(count);
  for (let i = 0; i < count; i++) tokens[i] = VOCABULARY[Math.floor(random() * VOCABULARY.length)]!;
  return tokens;
}

/** A draw from the output-length distribution: fixed, or exponential around `mean`, in [1, max]. */
export function drawOutputLength(
  spec: { mean: number; max: number; fixed: boolean },
  random: () => number,
): number {
  if (spec.fixed) return spec.mean;
  const draw = Math.ceil(-spec.mean * Math.log(1 - random()));
  return Math.max(1, Math.min(spec.max, draw));
}

/** Rough token count: about four characters a token, as for English with a BPE tokenizer. */
export function countTextTokens(text: string): number {
  return text.length === 0 ? 0 : Math.ceil(text.length / 4);
}

/** Multiplies a delay by a uniform draw from [1 - jitter, 1 + jitter]. */
export function applyJitter(delayMs: number, jitter: number, random: () => number): number {
  if (jitter === 0 || delayMs === 0) return delayMs;
  return delayMs * (1 - jitter + 2 * jitter * random());
}

/** A unit-length vector derived from the input, so equal inputs embed identically. */
export function embed(text: string, dimensions: number, seed: number): number[] {
  const random = createRandom(hashString(text, seed));
  const vector = new Array<number>(dimensions);
  let norm = 0;
  for (let i = 0; i < dimensions; i++) {
    const value = random() * 2 - 1;
    vector[i] = value;
    norm += value * value;
  }
  const scale = norm === 0 ? 0 : 1 / Math.sqrt(norm);
  for (let i = 0; i < dimensions; i++) vector[i] = Math.round(vector[i]! * scale * 1e6) / 1e6;
  return vector;
}
