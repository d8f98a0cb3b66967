// Model aliases: a client-facing name (say `gpt-4o-mini`) served under another (`meta-llama/Llama-3.1-8B-Instruct`).
// The request's `model` is rewritten on the way up; responses come back naming the alias. vLLM writes JSON without
// spaces, so the served name appears in a response (and in every stream chunk) as `"model":"<served>"`: replacing
// those bytes renames it without parsing the body, chunk by chunk.
import { Transform, type TransformCallback } from 'node:stream';

/** The alias a request used and the name it was served under. */
export interface ModelAlias {
  alias: string;
  served: string;
}

/** Rewrites `"model":"<served>"` to `"model":"<alias>"` across chunk boundaries, holding back only a partial match. */
export class ModelRenamer {
  private readonly pattern: Buffer;
  private readonly replacement: Buffer;
  private carry: Buffer = Buffer.alloc(0);

  constructor({ alias, served }: ModelAlias) {
    this.pattern = Buffer.from(`"model":${JSON.stringify(served)}`);
    this.replacement = Buffer.from(`"model":${JSON.stringify(alias)}`);
  }

  push(chunk: Uint8Array): Buffer {
    const data = this.carry.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.carry, chunk]);
    const parts: Buffer[] = [];
    let from = 0;
    for (;;) {
      const at = data.indexOf(this.pattern, from);
      if (at === -1) break;
      parts.push(data.subarray(from, at), this.replacement);
      from = at + this.pattern.length;
    }
    // Hold back a tail only if it could be the start of the pattern (an SSE event's `\n\n` goes out at once).
    const keep = this.partialMatch(data, from);
    parts.push(data.subarray(from, data.length - keep));
    this.carry = keep === 0 ? Buffer.alloc(0) : Buffer.from(data.subarray(data.length - keep));
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  flush(): Buffer {
    const rest = this.carry;
    this.carry = Buffer.alloc(0);
    return rest;
  }

  /** The length of the longest suffix of `data` (after `from`) that is a proper prefix of the pattern. */
  private partialMatch(data: Buffer, from: number): number {
    const longest = Math.min(this.pattern.length - 1, data.length - from);
    for (let k = longest; k > 0; k--) {
      if (data.compare(this.pattern, 0, k, data.length - k) === 0) return k;
    }
    return 0;
  }
}

/** A Node stream renaming the model in `body` (for `request()`'s raw responses). */
export function renameModelStream(
  body: NodeJS.ReadableStream & { destroy(error?: Error): void },
  alias: ModelAlias,
): Transform {
  const renamer = new ModelRenamer(alias);
  const transform = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      callback(null, renamer.push(chunk));
    },
    flush(callback: TransformCallback) {
      callback(null, renamer.flush());
    },
  });
  body.on('error', (error: Error) => transform.destroy(error));
  // Destroying the renamed stream releases the upstream connection, as destroying the body itself would.
  transform.on('close', () => body.destroy());
  body.pipe(transform);
  return transform;
}

/** The same for a WHATWG stream (for `fetch` responses). */
export function renameModelWebStream(alias: ModelAlias): TransformStream<Uint8Array, Uint8Array> {
  const renamer = new ModelRenamer(alias);
  return new TransformStream({
    transform(chunk, controller) {
      const out = renamer.push(chunk);
      if (out.length > 0) controller.enqueue(out);
    },
    flush(controller) {
      const out = renamer.flush();
      if (out.length > 0) controller.enqueue(out);
    },
  });
}
