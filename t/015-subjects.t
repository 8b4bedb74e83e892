#!/usr/bin/perl

# Who may get which token: a subject is well-formed UTF-8 of at most 256
# bytes without control characters, or the request gets 403 and no token
# request is made.  With "subjects=" set, a request that names no subject
# and has no "subject=" default gets 403 too: never the service account's
# own token.  Before, a subject that was not UTF-8 passed the regex, jansson
# refused it, and the assertion went out without its "sub" claim.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+@example\.com";

    cloudauth_credential fallback type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        subject=default@example.com "subjects=.+@example\.com";

    cloudauth_credential open type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /people/ {
            cloudauth people;
            cloudauth_subject $http_x_user_email;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /fallback/ {
            cloudauth fallback;
            cloudauth_subject $http_x_user_email;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /open/ {
            cloudauth open;
            cloudauth_subject $http_x_user_email;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF

sub get {
    my ($path, $subject) = @_;
    return $t->http_get($path, defined $subject
                               ? ('X-User-Email' => $subject) : ());
}

# refused: 403, no token request, nothing proxied

my %bad = (
    'not UTF-8' => "\xffa\@example.com",
    'overlong UTF-8' => "\xc0\xafa\@example.com",
    'a UTF-16 surrogate' => "\xed\xa0\x80a\@example.com",
    'truncated UTF-8' => "a\@example.com\xc3",
    'a control character' => "a\x01b\@example.com",
    'a C1 control character' => "a\xc2\x85b\@example.com",
    'DEL' => "a\x7f\@example.com",
    '257 bytes' => ('a' x 245) . '@example.com',
);

my $n = $t->token_count;
my $mark = length $t->error_log;

for my $what (sort keys %bad) {
    is(get('/people/x', $bad{$what})->{status}, 403,
       "subjects=: a subject with $what: 403");
    is(get('/open/x', $bad{$what})->{status}, 403,
       "no subjects=: a subject with $what: 403");
}

is(get('/people/x')->{status}, 403, 'subjects=, no subject, no default: 403');
is(get('/people/x', '')->{status}, 403, 'an empty subject: 403');

is($t->token_count, $n, 'no token request for any of them');
is(scalar(grep { $_->{uri} =~ m{^/(people|open)/} } $t->upstream_requests),
   0, 'none proxied');

my @warn = grep { /\[warn\].* answered 403, client: 127\.0\.0\.1, .*request: "GET \/(people|open)\/x HTTP/ }
           split /\n/, substr $t->error_log, $mark;
is(scalar @warn, 2 * keys(%bad) + 2, 'each refusal logged with its request');
like(join("\n", @warn), qr/subject is not valid UTF-8/, 'with the reason');
like(join("\n", @warn), qr/no subject, and "subjects=" is set/,
     'and the other reason');

# allowed: the sub claim is the subject, byte for byte

my $r = get('/people/x', "jos\xc3\xa9\@example.com");
is($r->{status}, 200, 'a UTF-8 subject: 200');
is(($t->token_requests)[-1]{claims}{sub}, "jos\xc3\xa9\@example.com",
   'its sub claim');

my $long = ('a' x 244) . '@example.com';
$r = get('/people/x', $long);
is($r->{status}, 200, '256 bytes: 200');
is(($t->token_requests)[-1]{claims}{sub}, $long, 'its sub claim');

$r = get('/fallback/x');
is($r->{status}, 200, 'no subject, with subject=: 200');
is(($t->token_requests)[-1]{claims}{sub}, 'default@example.com',
   'the default subject');

$r = get('/open/x');
is($r->{status}, 200, 'no subjects=, no subject: 200');
ok(!exists(($t->token_requests)[-1]{claims}{sub}), 'the account itself');

# a location that can never name a subject fails nginx -t

my ($rc, $out) = $t->nginx_t(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%%;

        location / {
            cloudauth people;
        }
    }
EOF
isnt($rc, 0, 'subjects= without a subject in a location: nginx -t fails');
like($out, qr/"subjects=" but no "subject=".*add cloudauth_subject/,
     'and says what to add');

($rc, $out) = $t->nginx_t(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%%;

        location / {
            cloudauth_gcs_upload people bucket=b;
        }
    }
EOF
isnt($rc, 0, 'an upload with such a credential: nginx -t fails');
like($out, qr/cloudauth_gcs_upload: credential "people" has "subjects="/,
     'and says why');

# subjects= that would escape its anchors, a default subject it refuses

for my $bad ('"subjects=a)|(.*"', 'subject=x@evil.example "subjects=.+@example\.com"',
             "subject=\"a\x01b\@example.com\" \"subjects=.+\"")
{
    ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% $bad;
EOF
    isnt($rc, 0, "nginx -t refuses $bad");
    like($out, qr/cloudauth_credential "people": subject/, 'and says why');
}

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
