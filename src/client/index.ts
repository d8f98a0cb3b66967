// The pooled vLLM client.
export {
  type CallOptions,
  createVllmClient,
  type RawRequest,
  type RawResponse,
  type UpstreamStats,
  type VllmClient,
  type VllmClientStats,
} from './client.js';
export type { VllmClientOptions } from './options.js';
export type { RoutingSync, RoutingUpdate } from './replica-pool.js';
export type { RoutingCandidate, RoutingFunction, RoutingPolicy } from './routing-policy.js';
export { clusterRoutingSync, redisRoutingSync, serveClusterRoutingSync } from './routing-sync.js';
export type { TelemetryOptions } from './telemetry.js';
export type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatMessage,
  Completion,
  CompletionChunk,
  CompletionRequest,
  EmbeddingList,
  EmbeddingRequest,
  FinishReason,
  ModelList,
  Role,
  ToolCall,
  Usage,
} from './types.js';
