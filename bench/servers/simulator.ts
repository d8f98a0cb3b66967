// Benchmark child: the vLLM simulator with zero latency.
import { startVllmSimulator } from '../../src/testing/index.js';
import { serveInChild } from '../lib/child.js';

const sim = await startVllmSimulator({ keepAliveTimeoutMs: 60_000 });
serveInChild(sim.url, () => sim.close());
