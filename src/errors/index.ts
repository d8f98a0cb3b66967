// The vllm-kit error family: one base class, a subclass per kind, stable `code`s, and guards that work across realms.

/** Brand shared by every copy of this module (ESM, CJS, another realm), so guards never rely on `instanceof`. */
const BRAND = Symbol.for('vllm-kit.error');

/** Stable machine-readable codes, in the style of undici's `UND_ERR_*`. */
export type VllmKitErrorCode = 'ERR_VK_INVALID_OPTION' | (string & {});

export interface VllmKitErrorOptions {
  cause?: unknown;
}

/** Base class of every error vllm-kit throws. Check with {@link isVllmKitError}, which also works across realms. */
export class VllmKitError extends Error {
  /** Stable code; see each subclass. */
  readonly code: VllmKitErrorCode;

  constructor(message: string, code: VllmKitErrorCode, options?: VllmKitErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    Object.defineProperty(this, BRAND, { value: true });
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** An option passed to a factory is missing, of the wrong type or out of range. Thrown at construction. */
export class InvalidOptionError extends VllmKitError {
  /** The option's path, e.g. `faults.status.status`. */
  readonly option: string;

  constructor(option: string, message: string) {
    super(message, 'ERR_VK_INVALID_OPTION');
    this.option = option;
  }
}

/** True for any error thrown by vllm-kit, from any copy of the package or realm. */
export function isVllmKitError(value: unknown): value is VllmKitError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** True for {@link InvalidOptionError}. */
export function isInvalidOptionError(value: unknown): value is InvalidOptionError {
  return isVllmKitError(value) && value.code === 'ERR_VK_INVALID_OPTION';
}
