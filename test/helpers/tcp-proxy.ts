// A TCP proxy on loopback in front of a real service (PostgreSQL, Redis), for fault tests that must never stop the
// machine's own service: `cut()` resets every open connection and refuses new ones (as a restart or failover looks to
// a client), `restore()` lets connections through again; `blackHole()` accepts and never answers.
import { connect, createServer, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  /** host:port of the proxy. */
  host: string;
  port: number;
  /** Connections accepted since start. */
  accepted(): number;
  cut(): void;
  restore(): void;
  blackHole(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let mode: 'pass' | 'cut' | 'black-hole' = 'pass';
  let accepted = 0;
  const open = new Set<Socket>();
  const server: Server = createServer((client) => {
    accepted++;
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => {});
    if (mode === 'cut') {
      client.resetAndDestroy();
      return;
    }
    if (mode === 'black-hole') return;
    const upstream = connect(target.port, target.host);
    open.add(upstream);
    upstream.on('close', () => {
      open.delete(upstream);
      client.destroy();
    });
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const port = (server.address() as { port: number }).port;
  const dropAll = () => {
    for (const socket of open) {
      if (typeof socket.resetAndDestroy === 'function' && !socket.destroyed) socket.resetAndDestroy();
      else socket.destroy();
    }
    open.clear();
  };
  return {
    host: '127.0.0.1',
    port,
    accepted: () => accepted,
    cut() {
      mode = 'cut';
      dropAll();
    },
    restore() {
      mode = 'pass';
    },
    blackHole() {
      mode = 'black-hole';
      dropAll();
    },
    async close() {
      dropAll();
      await new Promise((done) => server.close(done));
    },
  };
}
