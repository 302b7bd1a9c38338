# The method Rails runs a request as (Rack::MethodOverride), for
# tests/integration/test_method_override_peers.py.
#
# Debian's Rack 2.2 (ruby-rack) on WEBrick (ruby-webrick): `ruby rack_app.rb PORT`. Answers every
# request with JSON: rack is REQUEST_METHOD after Rack::MethodOverride (the _method of a form body,
# url-encoded or multipart, or a POST without a Content-Type), or "EXC:<class>" where Rack raised and
# runs nothing; the rest is what Rack read, to explain a failure.

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

# A body Rack refuses to read (too many parts, say) raises out of Rack::MethodOverride: the request
# fails and runs nothing, answered here as rack "EXC:<class>" rather than WEBrick's 500 page.
override = Rack::MethodOverride.new(inner)
app = lambda do |env|
  override.call(env)
rescue StandardError => e
  [200, { 'Content-Type' => 'application/json' }, [JSON.generate(rack: "EXC:#{e.class}", content_type: env['CONTENT_TYPE'])]]
end

Rack::Handler::WEBrick.run(
  app,
  Host: '127.0.0.1',
  Port: port,
  AccessLog: [],
  Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN)
)
