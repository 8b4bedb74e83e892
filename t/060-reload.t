#!/usr/bin/perl

# Reload keeps the shared token cache: after "nginx -s reload" (HUP to the
# master), with the same or a changed configuration, the new workers serve
# the cached tokens without a new token request.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential delegated type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% subject=alice@example.com;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        add_header X-Pid $pid;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /sub/ {
            cloudauth delegated;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        # MORE
    }
EOF

$t->run($conf);

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

# every answer of N requests to PATH, by token; and the workers seen
sub tokens {
    my ($path, $n) = @_;
    my (%tok, %pid);
    for (1 .. $n) {
        my $r = $t->http_get($path);
        $tok{ auth($r) }++;
        $pid{ $r->{headers}{'x-pid'} // 0 }++;
    }
    return ([sort keys %tok], [sort keys %pid]);
}

my $api = auth($t->http_get('/api/x'));
my $sub = auth($t->http_get('/sub/x'));
like($api, qr/^Bearer ya29\./, 'token');
like($sub, qr/^Bearer ya29\./, 'subject token');
is($t->token_count, 2, 'two token requests');

my @old = $t->worker_pids;

ok($t->reload, 'reload, same configuration');

my ($tok, $pids) = tokens('/api/x', 20);
is_deeply($tok, [$api], 'same token after reload');
my %old = map { $_ => 1 } @old;
ok(@$pids && !grep({ $old{$_} } @$pids), 'served by new workers');
is(auth($t->http_get('/sub/x')), $sub, 'same subject token after reload');
is($t->token_count, 2, 'no token request after reload');

(my $more = $conf) =~ s{# MORE}{location /more/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }};

ok($t->reload($more), 'reload, changed configuration');

($tok) = tokens('/more/x', 10);
is_deeply($tok, [$api], 'same token in a new location');
($tok) = tokens('/api/x', 10);
is_deeply($tok, [$api], 'same token after the second reload');
is($t->token_count, 2, 'no token request after the second reload');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
