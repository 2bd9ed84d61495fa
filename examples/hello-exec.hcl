# The same web page without docker: a Python HTTP server run by raw_exec on the
# client host, on a dynamic port, answering GET / with its allocation's name and ID.
#
#   corral job run examples/hello-exec.hcl
#
# "${NOMAD_IP_http}" and "${NOMAD_PORT_http}" are filled in on the client at run time
# and reach the script as its arguments.
job "hello-exec" {
  type = "service"

  group "web" {
    count = 2

    network {
      port "http" {}
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "python3"
        args = [
          "-c",
          <<-EOF
          import http.server, os, sys

          ip, port = sys.argv[1], int(sys.argv[2])
          body = "hello from %s (%s)\n" % (
              os.environ.get("NOMAD_ALLOC_NAME", "?"),
              os.environ.get("NOMAD_ALLOC_ID", "?"),
          )


          class Handler(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  data = body.encode()
                  self.send_response(200)
                  self.send_header("Content-Type", "text/plain; charset=utf-8")
                  self.send_header("Content-Length", str(len(data)))
                  self.end_headers()
                  self.wfile.write(data)


          http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
          EOF
          ,
          "${NOMAD_IP_http}",
          "${NOMAD_PORT_http}",
        ]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
