// vllm-kit/testing: a fast, faithful vLLM simulator for tests, benchmarks and demos.
export type { OutputTokens, SimulatorFaults, SimulatorRequest, VllmSimulatorOptions } from './options.js';
export { type SimulatorStats, startVllmSimulator, type VllmSimulator } from './simulator.js';
