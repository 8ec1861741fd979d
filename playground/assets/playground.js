// Starts GraphiQL on the page's #graphiql element, sending the token typed
// above it with every request and websocket connection.
const input = document.getElementById('token');
input.value = localStorage.getItem('sylphx-token') || '';
input.addEventListener('change', () => localStorage.setItem('sylphx-token', input.value.trim()));
const auth = () => input.value.trim() ? { Authorization: 'Bearer ' + input.value.trim() } : {};
const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql/ws';
const fetcher = GraphiQL.createFetcher({
  url: '/graphql',
  subscriptionUrl: wsUrl,
  headers: {},
  fetch: (url, init) => fetch(url, { ...init, headers: { ...init.headers, ...auth() } }),
  wsConnectionParams: () => auth(),
});
ReactDOM.createRoot(document.getElementById('graphiql')).render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: '# Paste your API token above, then run:\n{\n  viewer { role organization { slug } }\n  projects(first: 10) { nodes { slug name environments { name domain } } }\n}\n',
  }),
);
