// Token usage read from OpenAI-shaped responses as they pass through: a whole JSON body's `usage`, an SSE stream's
// final usage chunk or continuous usage (vLLM's `continuous_usage_stats`: usage on every chunk), and, for a stream cut
// by either side, what it had delivered so far. Also asks the upstream for usage and removes from the stream what the
// client did not ask for, byte for byte.

import { jsonValueEnd, lastUsageText, parseUsage, USAGE_KEY } from '../internal/usage-json.js';

/** Tokens a response used. */
export interface TokenUsage {
  promptTokens: number;
  completionTokens: number;
  /**
   * `reported`: the upstream's own figures (a body's usage, a stream's usage chunk or its last continuous usage).
   * `counted`: the upstream reported nothing: completion tokens are the content chunks counted (one token each, as
   * vLLM streams when not merging) and prompt tokens the request's estimate.
   */
  source: 'reported' | 'counted';
}

/**
 * What to remove from a stream: `none`; `chunks`, the `usage` field of chunks that carry choices (continuous usage the
 * client did not ask for); `all`, that and the final usage-only chunk (the client asked for no usage at all).
 */
export type UsageStrip = 'none' | 'chunks' | 'all';

export interface UsageMeterOptions {
  /** An SSE stream (`text/event-stream`) rather than one JSON body. */
  stream: boolean;
  /** What to remove from the stream. @default 'none' */
  strip?: UsageStrip;
  /**
   * Choices per request: `n`, or prompts × `n` for a completion with a list of prompts. Continuous usage counts each
   * choice's tokens separately. @default 1
   */
  choices?: number;
  /**
   * Choices per prompt (`n`) when a completion has several prompts: choice `i` belongs to prompt `⌊i / n⌋`, and each
   * prompt's tokens count once. @default choices (one prompt)
   */
  n?: number;
  /** The prompt's tokens when the upstream reports none (see {@link estimatePromptTokens}). @default 0 */
  promptTokensEstimate?: number | (() => number);
}

// Searched in the latin1 text of the bytes: one character per byte, so a text offset is a byte offset, and V8's string
// search runs without a native call per needle (a Buffer search per needle and event cost ~3 µs a token).
const CHOICES = '"choices":[';
const EMPTY_VALUE = ':""';
const DONE = 'data: [DONE]';
const INDEX = /"choices":\[\{"index":(\d+)/;
const EMPTY = Buffer.alloc(0);
/** An SSE event larger than this without its end is forwarded as it comes, unstripped (a normal one is < 1 KB). */
const MAX_EVENT_BYTES = 1 << 20;
/** What is kept of a body or an oversized event to read usage from: it comes last, in well under this. */
const TAIL_BYTES = 64 * 1024;

/** Where the next event ends in `text` from `from` (`\n\n` or `\r\n\r\n`) and the separator's length; [-1, 0]. */
function separatorAt(text: string, from: number): [end: number, length: number] {
  const lf = text.indexOf('\n\n', from);
  const crlf = text.indexOf('\r\n\r\n', from);
  if (lf === -1 && crlf === -1) return [-1, 0];
  // `\r\n\r\n` contains no `\n\n`: the first of the two found ends the event.
  if (lf === -1 || (crlf !== -1 && crlf < lf)) return [crlf, 4];
  return [lf, 2];
}

const concat = (a: Buffer, b: Buffer): Buffer =>
  a.length === 0 ? b : b.length === 0 ? a : Buffer.concat([a, b]);

/** What to do with one event: forward it, drop it, or cut `[cutFrom, cutTo)` out of it. */
const KEEP = 0;
const DROP = 1;
const CUT = 2;

/** Creates a {@link UsageMeter} (the factory every piece has; `new UsageMeter()` works too). */
export function createUsageMeter(options: UsageMeterOptions): UsageMeter {
  return new UsageMeter(options);
}

/**
 * Watches one response's bytes. `write` each chunk in order and forward what it returns; `end` returns the bytes
 * still held; `usage` is known at any point (after `end`, or mid-way for a stream cut short). The last bytes — a
 * whole JSON body, or a stream's `data: [DONE]` — are held until `end`, so a caller can charge the usage before the
 * client has the end of the answer.
 *
 * @example
 * const meter = new UsageMeter({ stream: true, strip: 'all' });
 * upstream.on('data', (chunk) => res.write(meter.write(chunk)));
 * upstream.on('end', async () => {
 *   const rest = meter.end();
 *   const { promptTokens, completionTokens } = meter.usage();
 *   await budgets.charge(key, promptTokens + completionTokens);
 *   res.end(rest);
 * });
 */
export class UsageMeter {
  private readonly stream: boolean;
  private readonly strip: UsageStrip;
  private readonly choices: number;
  private readonly n: number;
  private readonly estimate: number | (() => number);
  /**
   * Stream: the start of an event not yet complete (or the last bytes from `[DONE]` on). Body: its last bytes (at most
   * 2 × TAIL_BYTES).
   */
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** The last bytes (latin1) of an event too large to hold, forwarded as it came, until it ends. */
  private oversized: string | undefined = undefined;

  /** `data: [DONE]` was seen: everything from it on is held for `end`. */
  private done = false;
  /** The last usage value seen (continuous or final), unparsed: only the last one is ever needed. */
  private lastUsage: string | undefined = undefined;
  /** True once a final usage chunk (`choices: []`) was seen: its figures cover every choice. */
  private finalUsage = false;
  /** Continuous usage per choice index, when `choices` > 1. */
  private byChoice: Map<number, string> | undefined = undefined;
  private contentChunks = 0;
  /** Usage was seen on a chunk with choices (vLLM's continuous usage). */
  private continuous = false;
  private malformed = false;
  private cutFrom = 0;
  private cutTo = 0;

  constructor(options: UsageMeterOptions) {
    this.stream = options.stream;
    this.strip = options.strip ?? 'none';
    this.choices = options.choices ?? 1;
    this.n = options.n ?? this.choices;
    this.estimate = options.promptTokensEstimate ?? 0;
  }

  /** Takes the next chunk; returns the bytes to forward now (complete events, stripped as asked). */
  write(chunk: Buffer): Buffer {
    if (!this.stream || this.done) return this.holdTail(chunk);
    if (this.oversized !== undefined) return this.passOversized(chunk);
    if (this.held.length > 0) {
      // The held event ends in this chunk, or it is held on (searched once per chunk: linear in the event's size).
      const text = chunk.toString('latin1');
      const lastHeld = this.held[this.held.length - 1]!;
      const seam = lastHeld.subarray(Math.max(0, lastHeld.length - 3)).toString('latin1');
      if (separatorAt(seam + text, 0)[0] === -1) {
        this.held.push(Buffer.from(chunk));
        this.heldBytes += chunk.length;
        if (this.heldBytes > MAX_EVENT_BYTES) return this.becomeOversized();
        return EMPTY;
      }
    }
    const data = this.held.length === 0 ? chunk : Buffer.concat([...this.held, chunk]);
    this.held = [];
    this.heldBytes = 0;
    const text = data.toString('latin1');
    let start = 0;
    // The text to forward when stripping changed something (one Buffer made of it at the end: cheaper than slicing
    // and concatenating Buffers per event); undefined while every byte goes on unchanged.
    let out: string | undefined;
    let copiedTo = 0;
    for (;;) {
      const [end, separator] = separatorAt(text, start);
      if (end === -1) break;
      // A sliced string: no copy.
      const event = text.slice(start, end);
      if (event.startsWith(DONE)) {
        this.done = true;
        break;
      }
      const action = this.inspect(event, true);
      if (action !== KEEP) {
        out = (out ?? '') + text.slice(copiedTo, action === DROP ? start : start + this.cutFrom);
        copiedTo = action === DROP ? end + separator : start + this.cutTo;
      }
      start = end + separator;
    }
    let forward: Buffer;
    if (out === undefined) forward = start === data.length ? data : data.subarray(0, start);
    else forward = Buffer.from(out + text.slice(copiedTo, start), 'latin1');
    if (start < data.length) {
      const rest = data.subarray(start);
      if (this.done) return concat(forward, this.holdTail(rest));
      // Hold the incomplete event (copied: the chunk it came in is not ours to keep).
      this.held.push(Buffer.from(rest));
      this.heldBytes = rest.length;
      if (this.heldBytes > MAX_EVENT_BYTES) return concat(forward, this.becomeOversized());
    }
    return forward;
  }

  /**
   * Holds the last TAIL_BYTES (a body's usage, or what follows `[DONE]`), forwarding anything before them: what the
   * meter keeps is bounded however large the body, and each byte is copied at most twice.
   */
  private holdTail(chunk: Buffer): Buffer {
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    if (this.heldBytes <= 2 * TAIL_BYTES) return EMPTY;
    const all = Buffer.concat(this.held);
    this.held = [Buffer.from(all.subarray(all.length - TAIL_BYTES))];
    this.heldBytes = TAIL_BYTES;
    return all.subarray(0, all.length - TAIL_BYTES);
  }

  /**
   * An event past MAX_EVENT_BYTES without its end: forwarded as it comes, unstripped, and only its last TAIL_BYTES kept
   * to read usage from once it ends (a stream that never ends an event costs memory and time linear in nothing).
   */
  private becomeOversized(): Buffer {
    const all = Buffer.concat(this.held);
    this.held = [];
    this.heldBytes = 0;
    this.oversized = all.subarray(Math.max(0, all.length - TAIL_BYTES)).toString('latin1');
    return all;
  }

  private passOversized(chunk: Buffer): Buffer {
    const tail = this.oversized!;
    const text = chunk.toString('latin1');
    const seam = tail.slice(-3);
    const [at, separator] = separatorAt(seam + text, 0);
    if (at === -1) {
      this.oversized =
        tail.length + text.length <= TAIL_BYTES
          ? tail + text
          : (tail + text.slice(-TAIL_BYTES)).slice(-TAIL_BYTES);
      return chunk;
    }
    // The event ends here: its usage, if any, is in its tail; the rest of the chunk is metered as usual.
    const endInChunk = at - seam.length + separator;
    this.inspect((tail + text.slice(0, Math.max(0, at - seam.length))).slice(-TAIL_BYTES), false);
    this.oversized = undefined;
    if (endInChunk >= chunk.length) return chunk;
    return concat(chunk.subarray(0, endInChunk), this.write(chunk.subarray(endInChunk)));
  }

  /** Reads one event (its text, without the blank line); says whether to keep, drop or cut it. */
  private inspect(event: string, mayStrip: boolean): number {
    // One search tells a chunk with choices (`[{`) from the usage-only chunk (`[]`).
    let choice = event.indexOf(CHOICES);
    const usageOnly = choice !== -1 && event.charCodeAt(choice + CHOICES.length) === 0x5d; /* ] */
    if (usageOnly) choice = -1;
    // Chunks are counted only while no continuous usage has been seen (it is exact; counting is the fallback).
    if (choice !== -1 && !this.continuous) {
      const empty = event.indexOf(EMPTY_VALUE, choice);
      // The role-only first chunk and an empty last one carry no token: `"content":""` / `"text":""`.
      if (empty === -1 || !(event.endsWith('"content"', empty) || event.endsWith('"text"', empty))) {
        this.contentChunks++;
      }
    }
    const at = event.lastIndexOf(USAGE_KEY);
    if (at === -1) return KEEP;
    const valueStart = at + USAGE_KEY.length;
    const valueStop = jsonValueEnd(event, valueStart);
    if (valueStop === -1) {
      this.malformed = true;
      return KEEP;
    }
    if (event.charCodeAt(valueStart) === 0x7b /* { */) {
      const value = event.slice(valueStart, valueStop);
      if (usageOnly) {
        this.lastUsage = value;
        this.finalUsage = true;
      } else {
        if (!this.finalUsage) this.lastUsage = value;
        // Counting stops once continuous usage is known good (checked once: later figures are parsed only at the end).
        if (!this.continuous && parseUsage(value) !== undefined) this.continuous = true;
        if (this.choices > 1) {
          const index = INDEX.exec(event);
          if (index !== null) (this.byChoice ??= new Map()).set(Number(index[1]), value);
        }
      }
    }
    if (!mayStrip || this.strip === 'none' || (usageOnly && this.strip === 'chunks')) return KEEP;
    if (usageOnly) return DROP;
    // `,"usage":…` (or `"usage":…,` when it comes first in its object).
    if (event.charCodeAt(at - 1) === 0x2c /* , */) {
      this.cutFrom = at - 1;
      this.cutTo = valueStop;
      return CUT;
    }
    if (event.charCodeAt(valueStop) === 0x2c) {
      this.cutFrom = at;
      this.cutTo = valueStop + 1;
      return CUT;
    }
    return KEEP;
  }

  /** The response ended: returns the bytes still held (a body, `[DONE]`, an unterminated last event), to forward. */
  end(): Buffer {
    const rest =
      this.held.length === 0 ? EMPTY : this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held);
    this.held = [];
    this.heldBytes = 0;
    // A stream that ended inside an oversized event: its tail may hold usage.
    if (this.oversized !== undefined) {
      this.inspect(this.oversized + rest.toString('latin1'), false);
      this.oversized = undefined;
    }
    if (!this.stream && rest.length > 0) {
      const usage = lastUsageText(rest.toString('latin1'));
      if (usage !== undefined) {
        this.lastUsage = usage;
        this.finalUsage = true;
      }
    }
    return rest;
  }

  /** True when a usage object was present but unreadable (a metric worth watching). */
  get sawMalformedUsage(): boolean {
    return this.malformed;
  }

  /** The usage so far: the upstream's figures when it reported any, else the counted chunks. */
  usage(): TokenUsage {
    const reported = this.lastUsage === undefined ? undefined : parseUsage(this.lastUsage);
    if (this.lastUsage !== undefined && reported === undefined) this.malformed = true;
    if (reported !== undefined) {
      let completion = reported.completion;
      let prompt = reported.prompt;
      if (!this.finalUsage && this.byChoice !== undefined && this.byChoice.size > 1) {
        // Continuous usage per choice: completions add up; each prompt's tokens count once (several prompts: each its
        // own figure, from any of its choices).
        completion = 0;
        const promptOf = new Map<number, number>();
        for (const [index, bytes] of this.byChoice) {
          const figures = parseUsage(bytes);
          completion += figures?.completion ?? 0;
          const group = Math.floor(index / this.n);
          if (figures !== undefined && !promptOf.has(group)) promptOf.set(group, figures.prompt);
        }
        if (promptOf.size > 1) {
          prompt = 0;
          for (const tokens of promptOf.values()) prompt += tokens;
        }
      }
      return { promptTokens: prompt, completionTokens: completion, source: 'reported' };
    }
    const estimate = typeof this.estimate === 'function' ? this.estimate() : this.estimate;
    return { promptTokens: estimate, completionTokens: this.contentChunks, source: 'counted' };
  }
}

/** What {@link requestUsage} decided for one request. */
export interface UsageRequest {
  /** The body to send upstream (the same buffer when nothing had to change). */
  body: Buffer;
  /** What the response's meter removes, so the client gets what it asked for. */
  strip: UsageStrip;
}

/**
 * Makes a streamed chat or completion request ask the upstream for usage: `stream_options.include_usage`, and with
 * `continuous` (vLLM) `continuous_usage_stats`, so a stream cut short still has exact figures. Returns the body to
 * send and what to strip from the answer. Non-streamed requests are returned as they are (their body has usage).
 *
 * @param body The request body as received.
 * @param parsed The same body, parsed.
 */
export function requestUsage(body: Buffer, parsed: unknown, options: { continuous: boolean }): UsageRequest {
  if (typeof parsed !== 'object' || parsed === null || (parsed as { stream?: unknown }).stream !== true) {
    return { body, strip: 'none' };
  }
  const request = parsed as Record<string, unknown>;
  const asked = request.stream_options;
  const wants = typeof asked === 'object' && asked !== null ? (asked as Record<string, unknown>) : undefined;
  const clientUsage = wants?.include_usage === true;
  const clientContinuous = clientUsage && wants?.continuous_usage_stats === true;
  if (clientContinuous || (clientUsage && !options.continuous)) return { body, strip: 'none' };
  const strip: UsageStrip = clientUsage ? 'chunks' : 'all';
  const streamOptions = options.continuous
    ? { include_usage: true, continuous_usage_stats: true }
    : { include_usage: true };
  if (!('stream_options' in request)) {
    // Appended before the closing brace: every other byte of the client's body goes upstream as it came.
    let close = body.length - 1;
    while (close > 0 && body[close] !== 0x7d /* } */) close--;
    const insert = Buffer.from(`,"stream_options":${JSON.stringify(streamOptions)}`);
    return { body: Buffer.concat([body.subarray(0, close), insert, body.subarray(close)]), strip };
  }
  const rewritten = { ...request, stream_options: { ...wants, ...streamOptions } };
  return { body: Buffer.from(JSON.stringify(rewritten)), strip };
}

/** Characters per token for the estimate (English text averages about 4 with common BPE tokenizers). */
const CHARS_PER_TOKEN = 4;

/**
 * A prompt's tokens, estimated from a chat or completion request body when the upstream reports no usage: its text's
 * characters / 4, plus 4 tokens of chat template per message. An estimate, not a count; used only as a fallback.
 */
export function estimatePromptTokens(parsed: unknown): number {
  if (typeof parsed !== 'object' || parsed === null) return 0;
  const request = parsed as Record<string, unknown>;
  let chars = 0;
  let overhead = 0;
  // Content is a string, or a list of parts (strings or `{text}`), or for completions a list of prompts: two levels
  // at most are read, however deep a hostile body nests (no recursion to overflow).
  const add = (value: unknown, depth = 0): void => {
    if (typeof value === 'string') chars += value.length;
    // A token id (a prompt given as token ids) is one token.
    else if (typeof value === 'number') chars += CHARS_PER_TOKEN;
    else if (Array.isArray(value)) {
      if (depth < 2) for (const item of value) add(item, depth + 1);
    } else if (typeof value === 'object' && value !== null) {
      const part = value as Record<string, unknown>;
      if (typeof part.text === 'string') chars += part.text.length;
    }
  };
  if (Array.isArray(request.messages)) {
    for (const message of request.messages) {
      overhead += 4;
      if (typeof message === 'object' && message !== null) add((message as { content?: unknown }).content);
    }
  }
  add(request.prompt);
  add(request.input);
  return overhead + Math.ceil(chars / CHARS_PER_TOKEN);
}
