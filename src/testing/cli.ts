#!/usr/bin/env node
// vllm-kit-sim: runs the vLLM simulator from the command line, with the same options as startVllmSimulator.
import { isVllmKitError } from '../errors/index.js';
import { HELP, parseSimulatorArgs } from './cli-args.js';
import type { VllmSimulatorOptions } from './options.js';
import { startVllmSimulator } from './simulator.js';

async function main(): Promise<void> {
  let options: VllmSimulatorOptions | 'help';
  try {
    options = parseSimulatorArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`vllm-kit-sim: ${(error as Error).message}\n\n${HELP}`);
    process.exit(2);
  }
  if (options === 'help') {
    process.stdout.write(HELP);
    return;
  }
  try {
    const sim = await startVllmSimulator(options);
    process.stdout.write(
      `vLLM simulator listening on ${sim.url} (model ${sim.model}); OpenAI base URL ${sim.url}/v1\n`,
    );
    const stop = () => {
      void sim.close().then(() => process.exit(0));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  } catch (error) {
    const message = isVllmKitError(error) ? error.message : String(error);
    process.stderr.write(`vllm-kit-sim: ${message}\n`);
    process.exit(2);
  }
}

void main();
