# A web server in docker, two instances, each answering with its allocation's name.
#
#   corral job run examples/hello.hcl
#
# The image is built locally (no registry): a busybox-static rootfs imported as
# corral-busybox:latest. "${NOMAD_...}" is filled in on the client at run time.
job "hello" {
  type = "service"

  group "web" {
    count = 2

    network {
      # A dynamic host port, mapped to port 8080 inside the container.
      port "http" {
        to = 8080
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
          "mkdir -p /www && echo \"hello from ${NOMAD_ALLOC_NAME} (${NOMAD_ALLOC_ID})\" > /www/index.html && exec httpd -f -p 8080 -h /www",
        ]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
