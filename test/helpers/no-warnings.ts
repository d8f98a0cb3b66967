// Setup for every unit test file: a process warning (MaxListenersExceededWarning, a deprecation, an unhandled
// rejection turned warning) fails the file that caused it, rather than scrolling past in the output.
import { afterAll } from 'vitest';

const warnings: string[] = [];
const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`);
process.on('warning', onWarning);

afterAll(() => {
  process.off('warning', onWarning);
  if (warnings.length > 0) throw new Error(`process warnings during this file:\n${warnings.join('\n')}`);
});
