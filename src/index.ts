// vllm-kit: the server-side pieces. Each piece lives in its own folder; this file re-exports them by name.
export {
  InvalidOptionError,
  isInvalidOptionError,
  isVllmKitError,
  VllmKitError,
  type VllmKitErrorCode,
  type VllmKitErrorOptions,
} from './errors/index.js';
