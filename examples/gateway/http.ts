// HTTP plumbing of the gateway: its error type, JSON answers, reading a bounded body, request paths.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { type Refusal, refusalBody } from 'vllm-kit';

/** A JSON answer (nothing when the response has begun or the client has gone). */
export function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  sendText(res, status, JSON.stringify(body), headers);
}

function sendText(
  res: ServerResponse,
  status: number,
  text: string,
  headers: Readonly<Record<string, string>>,
): void {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

/** An OpenAI-style error: a step throws it, the gateway answers it — the same shape as the pieces' refusals. */
export class HttpError extends Error implements Refusal {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

/** Sends a piece's refusal (a rate limit, a budget, an overload error) or the gateway's own error, as it is built. */
export function sendError(res: ServerResponse, refusal: Refusal): void {
  if (res.headersSent || res.destroyed) return;
  sendText(res, refusal.status, refusalBody(refusal), refusal.headers);
}

/** Reads the body up to `limit` bytes; 413 beyond it (without reading the rest into memory). */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () =>
    new HttpError(413, `The request body exceeds ${limit} bytes`, 'invalid_request_error', 'body_too_large');
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** A lingering close reads (and drops) what is left of an upload for at most this long, and this much. */
const LINGER_MS = 5000;
const LINGER_BYTES = 256 * 1024 * 1024;

/**
 * Answers 413 to a client still uploading, so that it reads the answer rather than a connection reset: the response
 * (with `Connection: close`) goes out at once, but the socket is closed only once the upload has been read to its end
 * (and dropped), or after LINGER_MS / LINGER_BYTES — nginx's lingering_close. Closing with unread bytes in the
 * kernel's buffer would send a RST, and the client would lose the 413 it had not read yet.
 */
export function answerTooLarge(req: IncomingMessage, res: ServerResponse, error: HttpError): void {
  const text = refusalBody(error);
  res.writeHead(error.status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    connection: 'close',
  });
  res.write(text);
  let dropped = 0;
  const finish = () => {
    clearTimeout(timer);
    req.off('data', onData);
    if (!res.writableEnded) res.end();
  };
  const onData = (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > LINGER_BYTES) finish();
  };
  const timer = setTimeout(finish, LINGER_MS);
  timer.unref();
  req.on('data', onData);
  req.once('end', finish);
  req.once('error', finish);
  req.resume();
}

/** Lets an upstream body go unread (undici errors a destroyed body: nobody is waiting for that error). */
export function discard(body: Readable): void {
  body.on('error', () => {});
  body.destroy();
}

export const VALID_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** A path safe to repeat in an error message (anything else is not echoed). */
export const ECHOABLE_PATH = /^\/[A-Za-z0-9._~/-]{0,128}$/;

/** The path of a request target: origin-form (`/p?q`) or absolute-form (`http://host/p?q`, RFC 9112 §3.2.2). */
export function pathOf(url: string): string {
  let start = 0;
  if (url.charCodeAt(0) !== 47 /* / */) {
    const scheme = url.indexOf('://');
    start = scheme === -1 ? url.length : url.indexOf('/', scheme + 3);
    if (start === -1) return '/';
  }
  const query = url.indexOf('?', start);
  return query === -1 ? url.slice(start) : url.slice(start, query);
}
