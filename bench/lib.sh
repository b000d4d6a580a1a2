# bench/lib.sh — helpers the bench scripts share (sourced, not run).

# free_port: a loopback port nobody listens on now
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT [PID]: until something accepts on PORT (10 s at most), and
# while PID (when given) lives; 0 when it does, else 1
wait_port() {
    local i
    for i in $(seq 100); do
        [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
