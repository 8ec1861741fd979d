# Sourced by bench/ai.sh and bench/ab.sh: what both start the same way.

# A free TCP port on 127.0.0.1.
free_port() {
  "${PY:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The config of a gateway in front of the mock upstream:
#   gateway_config <port> <apps port> <data dir> <mock port> > sylphx.toml
# Run it with BENCH_MOCK_KEY set (any value; the mock ignores it).
gateway_config() {
  cat <<TOML
listen = "127.0.0.1:$1"
apps_listen = "127.0.0.1:$2"
data_dir = "$3"

[ai]
[[ai.providers]]
name = "mock"
base_url = "http://127.0.0.1:$4/v1"
api_key_env = "BENCH_MOCK_KEY"
models = ["mock-chat", "mock-embed"]
TOML
}
