// vllm-kit/browser: reserved for the browser-side verification cache (it arrives with its own release).
export {};
