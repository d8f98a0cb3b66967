// Benchmark child: the vLLM simulator with zero latency.

import { serveInChild } from '../lib/child.js';
import { testing } from '../lib/kit.js';

const sim = await testing.startVllmSimulator({ keepAliveTimeoutMs: 60_000 });
serveInChild(sim.url, () => sim.close());
