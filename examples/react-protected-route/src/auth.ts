/// <reference lib="dom" />
// The app's auth: the API key the user pasted, and a 5-minute cache of the gateway's "this key is valid" answer.
import { createBrowserTokenCache } from 'vllm-kit/browser';

export interface Principal {
  id: string;
  name: string;
}

const API_URL: string = (import.meta as { env?: Record<string, string | undefined> }).env?.VITE_API_URL ?? '';
const TOKEN_KEY = 'vllm-kit-example:token';

export const auth = createBrowserTokenCache<Principal>({
  // The gateway's GET /auth/verify: 200 with the key's id and name, 401 for a missing, invalid or revoked key.
  verify: async (token) => {
    const res = await fetch(`${API_URL}/auth/verify`, { headers: { authorization: `Bearer ${token}` } });
    if (res.status === 401) return null;
    if (!res.ok) throw new Error(`The gateway could not verify the key (${res.status})`);
    return (await res.json()) as Principal;
  },
});

export const getToken = (): string | null => localStorage.getItem(TOKEN_KEY);
export const setToken = (token: string): void => localStorage.setItem(TOKEN_KEY, token);

export function logout(): void {
  localStorage.removeItem(TOKEN_KEY);
  // Every other tab drops its cached answer too (the storage event).
  auth.invalidate();
}
