// The error family: codes, names, causes, and guards that hold across module copies.
import { describe, expect, it } from 'vitest';
import {
  InvalidOptionError,
  isInvalidOptionError,
  isVllmKitError,
  VllmKitError,
} from '../src/errors/index.js';

describe('VllmKitError', () => {
  it('carries name, code and cause', () => {
    const cause = new Error('root');
    const error = new VllmKitError('boom', 'ERR_VK_TEST', { cause });
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe('VllmKitError');
    expect(error.code).toBe('ERR_VK_TEST');
    expect(error.cause).toBe(cause);
    const invalid = new InvalidOptionError('x', 'bad x');
    expect(invalid.name).toBe('InvalidOptionError');
    expect(invalid.option).toBe('x');
    expect(isInvalidOptionError(invalid)).toBe(true);
    expect(isInvalidOptionError(error)).toBe(false);
  });

  it('guards recognise errors from another copy of the module (another realm or bundle)', () => {
    // An object branded the way every copy brands its errors, but not an instance of this copy's class.
    const foreign = Object.assign(Object.create(Error.prototype), {
      code: 'ERR_VK_INVALID_OPTION',
      message: 'x',
    });
    Object.defineProperty(foreign, Symbol.for('vllm-kit.error'), { value: true });
    expect(foreign instanceof VllmKitError).toBe(false);
    expect(isVllmKitError(foreign)).toBe(true);
    expect(isInvalidOptionError(foreign)).toBe(true);
    expect(isVllmKitError(new Error('plain'))).toBe(false);
    expect(isVllmKitError(null)).toBe(false);
    expect(isVllmKitError({ code: 'ERR_VK_INVALID_OPTION' })).toBe(false);
  });
});
