// Test fixtures: simulators and clients that are closed after each test.
import { afterEach } from 'vitest';
import { createVllmClient, type VllmClient, type VllmClientOptions } from '../../src/index.js';
import {
  startVllmSimulator,
  type VllmSimulator,
  type VllmSimulatorOptions,
} from '../../src/testing/index.js';

/** Registers an afterEach that closes everything the returned helpers opened. */
export function trackResources() {
  const closers: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    await Promise.all(closers.splice(0).map((close) => close()));
  });
  return {
    async simulator(options: VllmSimulatorOptions = {}): Promise<VllmSimulator> {
      const sim = await startVllmSimulator(options);
      closers.push(() => sim.close());
      return sim;
    },
    client(options: VllmClientOptions): VllmClient {
      const client = createVllmClient(options);
      closers.push(() => client.destroy());
      return client;
    },
    onCleanup(close: () => Promise<unknown>) {
      closers.push(close);
    },
  };
}

export const messages = [{ role: 'user', content: 'Say something.' }];

/** Samples a simulator's in-flight requests (running + waiting) every millisecond; `stop()` gives the peak. */
export function watchInFlight(sim: VllmSimulator): { stop(): number } {
  let peak = 0;
  const timer = setInterval(() => {
    const { running, waiting } = sim.stats();
    peak = Math.max(peak, running + waiting);
  }, 1);
  return {
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

/**
 * Generation requests a simulator received (whatever became of them): unlike `requestsReceived`, not counting the
 * GETs clients and gateways make on their own (model discovery, the health probe).
 */
export function generations(sim: VllmSimulator): number {
  const s = sim.stats();
  return s.running + s.waiting + s.completed + s.aborted + s.failed + s.rejected;
}
