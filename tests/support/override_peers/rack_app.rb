# The method Rails runs a request as (Rack::MethodOverride), for
# tests/integration/test_method_override_peers.py.
#
# Debian's Rack 2.2 (ruby-rack) on WEBrick (ruby-webrick): `ruby rack_app.rb PORT`. Answers every
# request with JSON: rack is REQUEST_METHOD after Rack::MethodOverride (the _method of a form body,
# url-encoded or multipart, or a POST without a Content-Type); the rest is what Rack read, to explain a
# failure.

require 'json'
require 'rack'
require 'rack/handler/webrick'
require 'webrick'

port = Integer(ARGV.fetch(0))

inner = lambda do |env|
  request = Rack::Request.new(env)
  post = begin
    request.POST
  rescue StandardError => e
    "EXC:#{e.class}"
  end
  body = {
    rack: env['REQUEST_METHOD'],
    original_method: env['rack.methodoverride.original_method'],
    content_type: env['CONTENT_TYPE'],
    post: post
  }
  text = begin
    JSON.generate(body)
  rescue StandardError
    JSON.generate(body.merge(post: post.inspect))
  end
  [200, { 'Content-Type' => 'application/json' }, [text]]
end

Rack::Handler::WEBrick.run(
  Rack::MethodOverride.new(inner),
  Host: '127.0.0.1',
  Port: port,
  AccessLog: [],
  Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN)
)
