#!/usr/bin/perl

# cloudauth_status always answers: an entry whose subject is not valid
# UTF-8 (taken from a request header by a credential without
# "subjects=") is shown with its bad bytes escaped as \xNN, beside the
# other entries, in a 200; valid UTF-8 is shown as it is.  The Prometheus
# text does not name subjects and answers as well.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential anyone type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /anyone/ {
            cloudauth anyone;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /status {
            cloudauth_status;
        }
    }
EOF

# subjects as bytes: valid UTF-8, and bytes that are not UTF-8 at all, a
# truncated sequence, an overlong encoding, a UTF-16 surrogate
my $utf8 = "j\xc3\xbcrgen\@example.com";
my @bad = ("\xff\xfebad\@example.com", "trunc\xc3\@example.com",
           "over\xc0\xaflong\@example.com", "sur\xed\xa0\x80\@example.com");

my $r = $t->http_get('/api/x');
is($r->{status}, 200, 'a good entry');
$r = $t->http_get('/anyone/x', 'X-User' => $utf8);
is($r->{status}, 200, 'a UTF-8 subject');

for my $s (@bad) {
    $r = $t->http_get('/anyone/x', 'X-User' => $s);
    note "subject with bad bytes: $r->{status}";
}

$r = $t->http_get('/status');
is($r->{status}, 200, 'status answers 200');

my $st = eval { JSON::PP->new->utf8->decode($r->{body}) };
ok(ref $st eq 'HASH', 'status is valid UTF-8 JSON') or diag $r->{body};
$st ||= {};

is(scalar @{ $st->{credentials}{google}{entries} || [] }, 1,
   'the good entry is listed');

my @subjects = map { $_->{subject} }
               @{ $st->{credentials}{anyone}{entries} || [] };
note 'anyone: ' . join(', ', map { JSON::PP->new->ascii->encode([$_]) }
                             @subjects);

my $u = $utf8;
utf8::decode($u);
ok((grep { $_ eq $u } @subjects), 'the UTF-8 subject shown as it is');

# what reached the cache is shown, its bad bytes escaped; after a 403
# (subjects refused before the cache) there is nothing to show

my %escaped = (
    $bad[0] => '\xff\xfebad@example.com',
    $bad[1] => 'trunc\xc3@example.com',
    $bad[2] => 'over\xc0\xaflong@example.com',
    $bad[3] => 'sur\xed\xa0\x80@example.com',
);

my @odd = grep { $_ ne $u } @subjects;
my %want = map { $_ => 1 } values %escaped;
is(join(', ', grep { !$want{$_} } @odd), '',
   'every other subject is one of the bad ones, escaped');

$r = $t->http_get('/status?format=prometheus');
is($r->{status}, 200, 'prometheus answers 200');
like($r->{body}, qr/^cloudauth_cache_entries\{credential="anyone"\} \d+$/m,
     'prometheus counts the entries');

$t->check_log_ok;

done_testing;
