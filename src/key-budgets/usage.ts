// Token usage read from OpenAI-shaped responses as they pass through: a whole JSON body's `usage`, an SSE stream's
// final usage chunk or continuous usage (vLLM's `continuous_usage_stats`: usage on every chunk), and, for a stream cut
// by either side, what it had delivered so far. Also asks the upstream for usage and removes from the stream what the
// client did not ask for, byte for byte.

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
  /** Choices per request (`n`): continuous usage counts each choice's tokens separately. @default 1 */
  choices?: number;
  /** The prompt's tokens when the upstream reports none (see {@link estimatePromptTokens}). @default 0 */
  promptTokensEstimate?: number | (() => number);
}

const USAGE = Buffer.from('"usage":');
const EVENT_END = Buffer.from('\n\n');
const CRLF_EVENT_END = Buffer.from('\r\n\r\n');
const NO_CHOICES = Buffer.from('"choices":[]');
const CHOICE = Buffer.from('"choices":[{');
const EMPTY_CONTENT = Buffer.from('"content":""');
const EMPTY_TEXT = Buffer.from('"text":""');
const DONE = Buffer.from('data: [DONE]');
const INDEX = /"choices":\[\{"index":(\d+)/;

/** The bounds of the JSON value starting at `start` (an object or a literal), or -1 when it is cut. */
function valueEnd(data: Buffer, start: number): number {
  if (data[start] !== 0x7b /* { */) {
    let i = start;
    while (i < data.length && data[i] !== 0x2c /* , */ && data[i] !== 0x7d /* } */) i++;
    return i < data.length ? i : -1;
  }
  let depth = 0;
  let inString = false;
  for (let i = start; i < data.length; i++) {
    const c = data[i];
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
function count(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** Reads `prompt_tokens`/`completion_tokens` from a usage value's bytes; undefined when absent or malformed. */
function parseUsage(bytes: Buffer): { prompt: number; completion: number } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('latin1'));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const usage = value as Record<string, unknown>;
  const prompt = count(usage.prompt_tokens);
  // Embeddings report no completion tokens.
  const completion = usage.completion_tokens === undefined ? 0 : count(usage.completion_tokens);
  if (prompt === undefined || completion === undefined) return undefined;
  return { prompt, completion };
}

/**
 * Watches one response's bytes. `write` each chunk in order and forward what it returns; `end` returns any bytes
 * still held; `usage` is known at any point (after `end`, or mid-way for a stream cut short).
 *
 * @example
 * const meter = new UsageMeter({ stream: true, strip: 'all' });
 * upstream.on('data', (chunk) => res.write(meter.write(chunk)));
 * upstream.on('end', async () => { res.end(meter.end()); await budgets.charge(key, total(meter.usage())); });
 */
export class UsageMeter {
  private readonly stream: boolean;
  private readonly strip: UsageStrip;
  private readonly choices: number;
  private readonly estimate: number | (() => number);
  /** Stream: the start of an event not yet complete. Body: every chunk so far. */
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** The last usage value seen (continuous or final), unparsed: only the last one is ever needed. */
  private lastUsage: Buffer | undefined = undefined;
  /** True once a final usage chunk (`choices: []`) was seen: its figures cover every choice. */
  private finalUsage = false;
  /** Continuous usage per choice index, when `choices` > 1. */
  private byChoice: Map<number, Buffer> | undefined = undefined;
  private contentChunks = 0;
  private malformed = false;

  constructor(options: UsageMeterOptions) {
    this.stream = options.stream;
    this.strip = options.strip ?? 'none';
    this.choices = options.choices ?? 1;
    this.estimate = options.promptTokensEstimate ?? 0;
  }

  /** Takes the next chunk; returns the bytes to forward now (complete events, stripped as asked). */
  write(chunk: Buffer): Buffer {
    if (!this.stream) {
      this.held.push(chunk);
      this.heldBytes += chunk.length;
      return chunk;
    }
    const data = this.heldBytes === 0 ? chunk : Buffer.concat([...this.held, chunk]);
    this.held = [];
    this.heldBytes = 0;
    let start = 0;
    // Parts to forward when stripping changed something; undefined while every byte goes on unchanged.
    let parts: Buffer[] | undefined;
    let copiedTo = 0;
    for (;;) {
      let end = data.indexOf(EVENT_END, start);
      let separator = 2;
      if (end === -1) {
        end = data.indexOf(CRLF_EVENT_END, start);
        separator = 4;
        if (end === -1) break;
      }
      const event = data.subarray(start, end);
      const cut = this.inspect(event);
      if (cut !== undefined) {
        parts ??= [];
        if (cut.dropEvent) {
          parts.push(data.subarray(copiedTo, start));
          copiedTo = end + separator;
        } else {
          parts.push(
            data.subarray(copiedTo, start + cut.from),
            data.subarray(start + cut.to, end + separator),
          );
          copiedTo = end + separator;
        }
      }
      start = end + separator;
    }
    if (start < data.length) {
      // Hold the incomplete event (copied: the chunk it came in is not ours to keep).
      this.held.push(Buffer.from(data.subarray(start)));
      this.heldBytes = data.length - start;
    }
    if (parts === undefined) return start === data.length ? data : data.subarray(0, start);
    parts.push(data.subarray(copiedTo, start));
    return Buffer.concat(parts);
  }

  /** Reads one event; returns the byte range to cut from it (or the whole event) when stripping applies. */
  private inspect(event: Buffer): { dropEvent: boolean; from: number; to: number } | undefined {
    if (event.indexOf(CHOICE) !== -1 && !this.isEmptyDelta(event)) this.contentChunks++;
    const at = event.indexOf(USAGE);
    if (at === -1 || event.indexOf(DONE) === 0) return undefined;
    const valueStart = at + USAGE.length;
    const valueStop = valueEnd(event, valueStart);
    if (valueStop === -1) {
      this.malformed = true;
      return undefined;
    }
    const value = event.subarray(valueStart, valueStop);
    const usageOnly = event.indexOf(NO_CHOICES) !== -1;
    if (value[0] === 0x7b /* { */) {
      // Copied: the event's buffer is forwarded (and may be pooled) after this returns.
      const kept = Buffer.from(value);
      if (usageOnly) {
        this.lastUsage = kept;
        this.finalUsage = true;
      } else {
        if (!this.finalUsage) this.lastUsage = kept;
        if (this.choices > 1) {
          const index = INDEX.exec(event.toString('latin1'));
          if (index !== null) (this.byChoice ??= new Map()).set(Number(index[1]), kept);
        }
      }
    }
    if (this.strip === 'none' || (usageOnly && this.strip === 'chunks')) return undefined;
    if (usageOnly) return { dropEvent: true, from: 0, to: 0 };
    // `,"usage":…` (or `"usage":…,` when it comes first in its object).
    if (event[at - 1] === 0x2c /* , */) return { dropEvent: false, from: at - 1, to: valueStop };
    if (event[valueStop] === 0x2c) return { dropEvent: false, from: at, to: valueStop + 1 };
    return undefined;
  }

  /** A chunk that carries no generated token: the role-only first chunk, or an empty final one. */
  private isEmptyDelta(event: Buffer): boolean {
    return event.indexOf(EMPTY_CONTENT) !== -1 || event.indexOf(EMPTY_TEXT) !== -1;
  }

  /** The stream ended: returns the bytes still held (an unterminated last event), or an empty buffer. */
  end(): Buffer {
    if (!this.stream) {
      const body = this.heldBytes === 0 ? Buffer.alloc(0) : Buffer.concat(this.held);
      this.held = [];
      this.heldBytes = 0;
      // The top-level usage comes after the choices, and a quote inside a string is escaped: the last `"usage":`
      // of the body is its own.
      const at = body.lastIndexOf(USAGE);
      if (at !== -1) {
        const stop = valueEnd(body, at + USAGE.length);
        if (stop !== -1 && body[at + USAGE.length] === 0x7b) {
          this.lastUsage = Buffer.from(body.subarray(at + USAGE.length, stop));
          this.finalUsage = true;
        }
      }
      return Buffer.alloc(0);
    }
    const rest = this.heldBytes === 0 ? Buffer.alloc(0) : Buffer.concat(this.held);
    this.held = [];
    this.heldBytes = 0;
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
      if (!this.finalUsage && this.byChoice !== undefined && this.byChoice.size > 1) {
        completion = 0;
        for (const bytes of this.byChoice.values()) completion += parseUsage(bytes)?.completion ?? 0;
      }
      return { promptTokens: reported.prompt, completionTokens: completion, source: 'reported' };
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
  const add = (value: unknown): void => {
    if (typeof value === 'string') chars += value.length;
    else if (Array.isArray(value)) for (const item of value) add(item);
    else if (typeof value === 'object' && value !== null) {
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
