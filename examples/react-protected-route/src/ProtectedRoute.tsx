/// <reference lib="dom" />
// The seed's protected-route.tsx: render the page only for a verified key, re-verifying at most every 5 minutes.
// This is a user-experience optimisation, never an authorization decision: the gateway checks every API request.
import { type ReactNode, useEffect, useState } from 'react';
import { auth, getToken, type Principal } from './auth.js';
import { navigate } from './router.js';

type State =
  | { status: 'checking' }
  | { status: 'ok'; principal: Principal }
  | { status: 'error'; message: string };

export function ProtectedRoute({ children }: { children: (principal: Principal) => ReactNode }) {
  const [state, setState] = useState<State>({ status: 'checking' });

  useEffect(() => {
    let cancelled = false;
    auth.check(getToken()).then(
      (principal) => {
        if (cancelled) return;
        if (principal === null) navigate('/login');
        else setState({ status: 'ok', principal });
      },
      (error: unknown) => {
        if (!cancelled) setState({ status: 'error', message: (error as Error).message });
      },
    );
    // Logged out in another tab: leave at once.
    const unsubscribe = auth.onInvalidate(() => navigate('/login'));
    return () => {
      cancelled = true;
      unsubscribe();
    };
  }, []);

  if (state.status === 'checking') return <p data-testid="checking">Checking your key…</p>;
  if (state.status === 'error') return <p role="alert">{state.message}</p>;
  return <>{children(state.principal)}</>;
}
