# A zero-downtime rolling update behind Traefik: four busybox httpd containers,
# replaced one at a time, each new one serving only once its health check has
# passed for min_healthy_time, each old one leaving the proxy before it stops.
#
#   corral job run examples/traefik.hcl   # Traefik on every client (system job)
#   corral job run examples/rolling.hcl   # version v1
#   curl -H 'Host: rolling.localhost' http://127.0.0.1:8080/
#       -> rolling v1 rolling.web[2] 6f0c...
#
# Release v2: change VERSION below to "v2" and run the job again. `corral job run`
# follows the deployment and exits 0 once the four v2 instances are healthy
# (1 when it failed and was rolled back). While it runs, every request through
# Traefik is answered, by v1 or by v2.
#
# A broken release: set HEALTH = "" (no /health page, the check fails). The new
# instance is never healthy, the deployment fails after healthy_deadline, and
# auto_revert registers the last stable version again; the old instances kept
# serving the whole time.
#
# A canary: add `canary = 1` to the update block; one new instance serves beside
# the old ones until `corral deployment promote <id>`.
#
# The image is built locally (scripts/build-image.sh): no registry is needed.
job "rolling" {
  type = "service"

  group "web" {
    count = 4

    update {
      max_parallel      = 1     # one instance replaced at a time
      min_healthy_time  = "2s"  # checks passing for 2s before the next one
      healthy_deadline  = "30s" # an instance not healthy by then fails the rollout
      progress_deadline = "1m"
      auto_revert       = true  # a failed rollout runs the last stable version again
    }

    # Stopping an instance: deregister it from the catalog, wait shutdown_delay
    # for Traefik to stop routing to it (about 0.5s with
    # providersThrottleDuration=0s, 2s with Traefik's default throttle), then
    # send kill_signal. 3s covers both.
    shutdown_delay = "3s"

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "rolling"
      port     = "http"
      provider = "nomad"
      tags = [
        "traefik.enable=true",
        "traefik.http.routers.rolling.rule=Host(`rolling.localhost`)",
      ]

      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }
    }

    task "server" {
      driver = "docker"

      # busybox httpd ignores SIGTERM as PID 1: `init = true` runs it under tini,
      # which forwards the signal, so the container stops at once.
      kill_signal  = "SIGTERM"
      kill_timeout = "5s"

      env {
        VERSION = "v1"
        HEALTH  = "ok" # the body of /health; "" = no /health page (failing check)
      }

      config {
        image   = "corral-busybox:latest"
        init    = true
        ports   = ["http"]
        command = "/bin/sh"
        args = [
          "-c",
          "mkdir -p /www && echo \"rolling $VERSION ${NOMAD_ALLOC_NAME} ${NOMAD_ALLOC_ID}\" > /www/index.html && if [ -n \"$HEALTH\" ]; then echo \"$HEALTH\" > /www/health; fi && exec httpd -f -p 8080 -h /www",
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
