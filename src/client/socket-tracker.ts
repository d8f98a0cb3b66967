// Which socket each request of the client is written to, and whether that socket had served a request before: what
// the keep-alive replay needs to know that a failure happened on a reused connection before any response byte.
import { channel } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';

/** Where one dispatch attempt went: its socket, whether the socket had served a request before, and bytes read. */
export interface Attempt {
  method: string;
  path: string;
  socket: Socket | undefined;
  reused: boolean;
  bytesReadAtSend: number;
}

const sendHeaders = channel('undici:client:sendHeaders');

/**
 * Learns which socket each request is written to. undici calls the handler's `onRequestStart` and, synchronously
 * right after, publishes `undici:client:sendHeaders` with the socket: the attempt waiting here is the one it names.
 */
export class SocketTracker {
  private waiting: Attempt | undefined;
  private readonly served = new WeakMap<Socket, number>();
  reusedRequests = 0;

  private readonly onSendHeaders = (message: unknown) => {
    const attempt = this.waiting;
    if (attempt === undefined) return;
    const { socket, request } = message as { socket: Socket; request: { method: string; path: string } };
    // The request undici writes right after our onConnect is ours; the check guards against an attempt that undici
    // aborted before writing, being matched with another client's request later.
    if (request.method !== attempt.method || request.path !== attempt.path) return;
    this.waiting = undefined;
    const count = this.served.get(socket) ?? 0;
    this.served.set(socket, count + 1);
    attempt.socket = socket;
    attempt.reused = count > 0;
    attempt.bytesReadAtSend = socket.bytesRead;
    if (count > 0) this.reusedRequests++;
  };

  constructor() {
    sendHeaders.subscribe(this.onSendHeaders);
  }

  expect(attempt: Attempt): void {
    this.waiting = attempt;
  }

  close(): void {
    sendHeaders.unsubscribe(this.onSendHeaders);
  }
}
