/// <reference lib="dom" />
// Three routes: /login (paste a key), /chat and /settings (protected).
import { type FormEvent, useState } from 'react';
import { logout, setToken } from './auth.js';
import { ProtectedRoute } from './ProtectedRoute.js';
import { navigate, usePath } from './router.js';

function Login() {
  const [key, setKey] = useState('');
  const submit = (event: FormEvent) => {
    event.preventDefault();
    setToken(key.trim());
    navigate('/chat');
  };
  return (
    <form onSubmit={submit}>
      <h1>Sign in</h1>
      <label>
        API key <input name="key" value={key} onChange={(e) => setKey(e.target.value)} autoComplete="off" />
      </label>
      <button type="submit">Continue</button>
    </form>
  );
}

function Nav() {
  return (
    <nav>
      <button type="button" onClick={() => navigate('/chat')}>
        Chat
      </button>
      <button type="button" onClick={() => navigate('/settings')}>
        Settings
      </button>
      <button
        type="button"
        onClick={() => {
          logout();
          navigate('/login');
        }}
      >
        Log out
      </button>
    </nav>
  );
}

export function App() {
  const path = usePath();
  if (path === '/login' || path === '/') return <Login />;
  const page = path === '/settings' ? 'Settings' : 'Chat';
  return (
    // key: each navigation mounts the route afresh, as a router would, so the cache is what saves the request.
    <ProtectedRoute key={path}>
      {(principal) => (
        <main>
          <Nav />
          <h1 data-testid="page">{page}</h1>
          <p data-testid="who">Signed in as {principal.name}</p>
        </main>
      )}
    </ProtectedRoute>
  );
}
