// Test helpers: plain HTTP calls to a loopback server, and an SSE reader, without the library's own client.
import { type Dispatcher, request } from 'undici';

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: () => unknown;
}

export interface CallOptions {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  body?: unknown;
  /** Sent as is instead of JSON-encoding `body`. */
  raw?: string;
  headers?: Record<string, string>;
  dispatcher?: Dispatcher;
  signal?: AbortSignal;
}

export async function call(baseUrl: string, path: string, options: CallOptions = {}): Promise<Reply> {
  const hasBody = options.body !== undefined || options.raw !== undefined;
  const response = await request(`${baseUrl}${path}`, {
    method: options.method ?? (hasBody ? 'POST' : 'GET'),
    headers: { ...(hasBody ? { 'content-type': 'application/json' } : {}), ...options.headers },
    body: options.raw ?? (options.body === undefined ? null : JSON.stringify(options.body)),
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const text = await response.body.text();
  return { status: response.statusCode, headers: response.headers, text, json: () => JSON.parse(text) };
}

/** Splits an SSE body into its `data:` payloads (`[DONE]` kept as the string). */
export function sseData(text: string): string[] {
  return text
    .split('\n\n')
    .filter((event) => event.startsWith('data: '))
    .map((event) => event.slice('data: '.length));
}

export const chatBody = (extra: Record<string, unknown> = {}) => ({
  messages: [{ role: 'user', content: 'Say something short.' }],
  ...extra,
});
