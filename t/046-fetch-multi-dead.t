#!/usr/bin/perl

# A curl multi handle that dies anyway is replaced.  The module's own socket
# callback never fails, so a small LD_PRELOAD shim (compiled here) wraps it
# and, when the test drops a trigger file, returns -1 once, as a failing
# callback would: libcurl marks the multi handle dead for good
# (CURLM_ABORTED_BY_CALLBACK).  The transfers in it must then fail cleanly
# (a token request answers 502 with a reason, an upload request is retried),
# and the next fetches of that worker run on a fresh multi handle.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

plan skip_all => 'no cc' unless grep { -x "$_/cc" } split /:/, $ENV{PATH};

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $dir = $t->dir;

# the workers (user nobody) remove the trigger when they act on it
mkdir "$dir/trigger";
chmod 0777, "$dir/trigger";
my $trigger = "$dir/trigger/kill";

$t->write_file('shim.c', <<'EOF');
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>

typedef CURLMcode (*setopt_pt)(CURLM *multi, CURLMoption option, ...);

static curl_socket_callback  module_cb;
static char                 *trigger;

/* a copy: nginx writes its process title over the environment */

__attribute__((constructor)) static void
shim_init(void)
{
    char  *s;

    s = getenv("CLOUDAUTH_SHIM_TRIGGER");
    trigger = s ? strdup(s) : NULL;
}

static int
shim_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    if (what != CURL_POLL_REMOVE && trigger && unlink(trigger) == 0) {
        return -1;
    }

    return module_cb(easy, s, what, userp, socketp);
}

/* the name in parentheses: curl.h of libcurl 8 (sid's) makes
 * curl_multi_setopt a macro (its type checks) */
CURLMcode
(curl_multi_setopt)(CURLM *multi, CURLMoption option, ...)
{
    va_list    ap;
    void      *p;
    long       l;
    setopt_pt  real;

    real = (setopt_pt) dlsym(RTLD_NEXT, "curl_multi_setopt");

    va_start(ap, option);

    if (option == CURLMOPT_SOCKETFUNCTION) {
        module_cb = va_arg(ap, curl_socket_callback);
        va_end(ap);
        return real(multi, option, shim_socket_cb);
    }

    if (option < CURLOPTTYPE_OBJECTPOINT) {
        l = va_arg(ap, long);
        va_end(ap);
        return real(multi, option, l);
    }

    p = va_arg(ap, void *);
    va_end(ap);
    return real(multi, option, p);
}
EOF

my $cflags = `pkg-config --cflags libcurl 2>/dev/null`;
chomp $cflags;
my $cc = "cc -shared -fPIC -Wall -Werror $cflags -o $dir/shim.so $dir/shim.c"
         . ' -lcurl -ldl';
my $out = `$cc 2>&1`;
is($?, 0, 'the shim compiles') or diag $out;

# the ASan runtime, when there is one, must stay first
$ENV{TEST_NGINX_PRELOAD} = join ' ', grep { defined && length }
                           $ENV{TEST_NGINX_PRELOAD}, "$dir/shim.so";
$ENV{CLOUDAUTH_SHIM_TRIGGER} = $trigger;

$t->run(<<'EOF', workers => 1, connections => 1024);
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential gcs type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /gcs-token/ {
            cloudauth gcs;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /upload/ {
            cloudauth_gcs_upload gcs bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

sub logged_since {
    my ($mark, $re) = @_;
    return grep { $_ =~ $re } split /\n/, substr $t->error_log, $mark;
}

sub arm {
    open my $fh, '>', $trigger or die "$trigger: $!";
    close $fh;
}

my $replaced = qr/\[error\].*the fetch client is replaced/;
my @workers = $t->worker_pids;

# a token request in the multi handle when it dies

arm();
my $mark = length $t->error_log;
my $n = $t->token_count;
my $start = time;

my $r = $t->http_get('/api/x');

is($r->{status}, 502, 'the multi handle died under a token request: 502');
like($r->{body}, qr/\S/, 'with a reason');
cmp_ok(time - $start, '<', 5, 'at once, not after cloudauth_timeout');
ok(!-e $trigger, 'the shim failed a socket callback');
ok($t->wait_for(sub { logged_since($mark, $replaced) }, 5),
   'the replacement is logged') or diag $t->tail_error_log;
ok(logged_since($mark,
                qr/\[error\].*"google": token request failed: .*fetch client/),
   'the token request failure is logged with the reason');

# the same worker fetches again, on a fresh multi handle

my $ok = $t->wait_for(sub { $t->http_get('/api/y')->{status} == 200 }, 20);
ok($ok, 'the next request gets a token');
is($t->token_count, $n + 1, 'the token endpoint got one token request');
is($t->http_get('/api/z')->{status}, 200, 'and the one after is served');

# an upload when the multi handle dies under its session start: that
# request fails, is retried on the fresh handle, and every byte arrives

is($t->http_get('/gcs-token/x')->{status}, 200, 'upload credential: token');

$mark = length $t->error_log;
arm();

my ($res, $sent) = CloudAuth::Upload::upload($t, '/upload/through',
                                             size => 3 * 262144 + 1000);

is($res->{status}, 201, 'upload across the death of the multi handle: 201')
    or diag $res->{raw};
ok(!-e $trigger, 'the shim failed a socket callback during the upload');
CloudAuth::Upload::stored_ok($t, 'test-bucket', 'through', $sent, 'upload');
ok(logged_since($mark, $replaced), 'the replacement is logged');
ok(logged_since($mark,
                qr/\[warn\].*upload: GCS answered 0: .*fetch client.*retrying/),
   'the failed session start is retried');

my ($r2, $sent2) = CloudAuth::Upload::upload($t, '/upload/after',
                                             size => 300000);
is($r2->{status}, 201, 'the next upload: 201') or diag $r2->{raw};
CloudAuth::Upload::stored_ok($t, 'test-bucket', 'after', $sent2,
                             'next upload');

is("@{[ $t->worker_pids ]}", "@workers",
   'one and the same worker served it all (none crashed)');
$t->token_verified_ok;
$t->check_log_ok;

done_testing;
