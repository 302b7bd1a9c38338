<?php
// The method Symfony and Laravel run a request as, for tests/integration/test_method_override_peers.py.
//
// Run by PHP's built-in server (`php -S 127.0.0.1:PORT app.php`) with Debian's Symfony HttpFoundation
// (php-symfony-http-foundation). Answers every request with JSON:
//   symfony  Request::getMethod() with http_method_override on (_method in the form body or query)
//   laravel  the same after Laravel's reading of a JSON body as the request's parameters: when the
//            Content-Type contains "/json" or "+json", the top-level JSON members replace the form
//            (Illuminate\Http\Request::isJson() and getInputSource())
// A decision that throws (Symfony refuses a method name that is not letters) is "EXC:<class>": the
// framework answers 400 and runs nothing. The rest is what PHP read, to explain a failure.

require_once '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';

use Symfony\Component\HttpFoundation\InputBag;
use Symfony\Component\HttpFoundation\Request;

Request::enableHttpMethodParameterOverride();

$raw = file_get_contents('php://input');
$out = [
    'request_method' => $_SERVER['REQUEST_METHOD'],
    'content_type' => $_SERVER['CONTENT_TYPE'] ?? null,
    'post' => $_POST,
    'get' => $_GET,
    'body_bytes' => strlen($raw),
];

try {
    $out['symfony'] = Request::createFromGlobals()->getMethod();
} catch (\Throwable $e) {
    $out['symfony'] = 'EXC:' . get_class($e);
}

try {
    $request = Request::createFromGlobals();
    $type = $request->headers->get('CONTENT_TYPE') ?? '';
    if (str_contains($type, '/json') || str_contains($type, '+json')) {
        $request->request = new InputBag((array) json_decode($raw ?: '[]', true));
    }
    $out['laravel'] = $request->getMethod();
} catch (\Throwable $e) {
    $out['laravel'] = 'EXC:' . get_class($e);
}

header('Content-Type: application/json');
echo json_encode($out, JSON_PARTIAL_OUTPUT_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
