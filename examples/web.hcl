# A web service behind Traefik: three busybox httpd containers, each answering
# with its allocation's name, registered in corral's service catalog only while
# their health check passes.
#
#   corral job run examples/traefik.hcl   # Traefik on every client (system job)
#   corral job run examples/web.hcl
#   curl http://127.0.0.1:8080/           # through Traefik, round-robin
#
# The image is built locally (scripts/build-image.sh): no registry is needed.
job "web" {
  type = "service"

  group "web" {
    count = 3

    network {
      # A dynamic host port, mapped to port 8080 inside the container.
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "web"
      port     = "http"
      provider = "nomad"
      tags = [
        "traefik.enable=true",
        "traefik.http.routers.web.rule=PathPrefix(`/`)",
      ]

      # Only instances whose check passes receive traffic: remove /www/health in
      # a container and Traefik stops routing to it within a few seconds.
      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }
    }

    task "server" {
      driver = "docker"

      config {
        image   = "corral-busybox:latest"
        ports   = ["http"]
        command = "/bin/sh"
        args = [
          "-c",
          "mkdir -p /www && echo \"hello from ${NOMAD_ALLOC_NAME} (${NOMAD_ALLOC_ID})\" > /www/index.html && echo ok > /www/health && exec httpd -f -p 8080 -h /www",
        ]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
