// Logs the page in: the token (typed, or from the URL fragment, which browsers never send to the
// server) goes once in an Authorization header to POST api/session, which answers with an
// HttpOnly session cookie; the page then reloads. The fragment is removed from the address bar.
const form = document.getElementById('login');
const input = document.getElementById('token');
const message = document.getElementById('message');

async function login(token) {
  const res = await fetch('api/session', { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  if (res.ok) {
    location.replace(location.pathname);
    return;
  }
  message.textContent = res.status === 401 ? 'That token is not right.' : `Sign-in failed (HTTP ${res.status}).`;
}

function loginFromFragment() {
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get('token');
  if (!fromFragment) return;
  history.replaceState(null, '', location.pathname);
  login(fromFragment);
}
loginFromFragment();
window.addEventListener('hashchange', loginFromFragment);
form.addEventListener('submit', (e) => {
  e.preventDefault();
  login(input.value.trim());
});
