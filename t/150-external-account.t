#!/usr/bin/perl

# type=google_external_account (workload identity federation) against a
# fake STS that verifies the RFC 8693 form and the subject token (an HS256
# JWT: signature, issuer, audience, expiry), a fake URL source of subject
# tokens that requires its headers, and the fake IAM Credentials endpoint
# taking the STS tokens.  The subject token is the file's current content
# (rotated during the test), a JSON field, or what the URL answers;
# impersonation with a lifetime; a workforce pool's userProject; burst,
# refresh ahead, 401, failures (invalid_grant, an expired subject token);
# the internal credentials on the status page; no token or subject token
# in any log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep);

use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::FakeSTS;
use CloudAuth::KindTests;

my $t = CloudAuth::Test->new;

my $ro = 'https://www.googleapis.com/auth/devstorage.read_only';
my $cloud = 'https://www.googleapis.com/auth/cloud-platform';
my $reader = 'reader@cloudauth-test.iam.gserviceaccount.com';
my $writer = 'writer@cloudauth-test.iam.gserviceaccount.com';
my $aud = '//iam.googleapis.com/projects/123456789/locations/global/'
          . 'workloadIdentityPools/k8s/providers/cluster';
my $wf = '//iam.googleapis.com/locations/global/workforcePools/staff/'
         . 'providers/okta';

CloudAuth::FakeSTS::start($t, pools => {
    $aud => { scopes => [$ro, $cloud] },
    $wf => { scopes => [$ro], user_project => 'proj-123' },
});
CloudAuth::FakeSTS::start_subject($t,
    headers => { Metadata => 'True', 'X-Subject-Key' => 'k1 "quoted"' });
CloudAuth::FakeProviders::start($t, 'iam', targets => { $reader => $ro },
                                issuers => ['sts']);

my $dir = $t->dir;
my $iam_url = 'https://127.0.0.1:' . $t->port('iam')
              . '/v1/projects/-/serviceAccounts/%s:generateAccessToken';
my $subject_url = 'https://127.0.0.1:' . $t->port('subject');

# subject tokens: files as the kubelet projects them

my $tok1 = CloudAuth::FakeSTS::subject_token($t);
my $tokj = CloudAuth::FakeSTS::subject_token($t);
my $expired = CloudAuth::FakeSTS::subject_token($t, exp => time - 100);
my $badaud = CloudAuth::FakeSTS::subject_token($t, aud => 'someone-else');

$t->write_file('token', "$tok1\n", 0644);
$t->write_file('token.json', encode_json({ id_token => $tokj,
                                           other => 'x' }), 0644);
$t->write_file('expired', $expired, 0644);
$t->write_file('badaud', $badaud, 0644);
$t->write_file('gone', $tok1, 0644);

my $file = { file => "$dir/token" };
my $imp = sub {
    my ($target, %o) = @_;
    return (service_account_impersonation_url => sprintf($iam_url, $target),
            %o);
};

my %files = (
    ea => { credential_source => $file },
    eajson => { credential_source => { file => "$dir/token.json",
        format => { type => 'json',
                    subject_token_field_name => 'id_token' } } },
    eaurl => { credential_source => { url => "$subject_url/text",
        headers => { Metadata => 'True',
                     'X-Subject-Key' => 'k1 "quoted"' } } },
    eaurljson => { credential_source => { url => "$subject_url/json",
        headers => { Metadata => 'True',
                     'X-Subject-Key' => 'k1 "quoted"' },
        format => { type => 'json',
                    subject_token_field_name => 'id_token' } } },
    eaimp => { credential_source => $file, $imp->($reader,
        service_account_impersonation => { token_lifetime_seconds => 1800 })
    },
    eaburst => { credential_source => $file, $imp->($reader) },
    eaimp401 => { credential_source => $file, $imp->($reader) },
    eaimpdenied => { credential_source => $file, $imp->($writer) },
    eaimpsts => { credential_source => $file, $imp->($reader) },
    eaflight => { credential_source => $file },
    earefresh => { credential_source => $file },
    ea401 => { credential_source => $file },
    eafail => { credential_source => $file },
    eaexpired => { credential_source => { file => "$dir/expired" } },
    eabadaud => { credential_source => { file => "$dir/badaud" } },
    eagone => { credential_source => { file => "$dir/gone" } },
    eawf => { credential_source => $file, audience => $wf,
              workforce_pool_user_project => 'proj-123' },
);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

EOF

for my $c (sort keys %files) {
    my $path = CloudAuth::FakeSTS::config($t, "$c.json", %{ $files{$c} });
    my $scopes = $c eq 'eajson' ? '' : " scopes=$ro";
    $conf .= "    cloudauth_credential $c type=google_external_account\n"
             . "        config_file=$path$scopes;\n";
}

$conf .= <<'EOF';

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /status {
            cloudauth_status;
        }
EOF

for my $c (sort keys %files) {
    $conf .= <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }
sub sts { [CloudAuth::FakeProviders::requests($t, 'sts')] }
sub sts_count { CloudAuth::FakeProviders::count($t, 'sts') }
sub sts_tokens { CloudAuth::FakeProviders::tokens($t, 'sts') }
sub sts_set { CloudAuth::FakeProviders::set($t, 'sts', @_) }
sub iam_count { CloudAuth::FakeProviders::count($t, 'iam') }
sub iam_tokens { CloudAuth::FakeProviders::tokens($t, 'iam') }
sub iam_set { CloudAuth::FakeProviders::set($t, 'iam', @_) }
sub subject { [CloudAuth::FakeProviders::requests($t, 'subject')] }
sub subject_set { CloudAuth::FakeProviders::set($t, 'subject', @_) }

my @pages;

# a file source: the exchange's form, the token it gives

my $r = $t->http_get('/ea/x');
is($r->{status}, 200, 'file source: proxied');
my $req = sts()->[-1];
ok($req->{verified}, 'file source: the exchange verified')
    or diag $req->{reason};
is(auth($r), "Bearer $req->{token}", 'file source: the STS token injected');
is_deeply($req->{form}, {
    grant_type => 'urn:ietf:params:oauth:grant-type:token-exchange',
    audience => $aud,
    scope => $ro,
    requested_token_type => 'urn:ietf:params:oauth:token-type:access_token',
    subject_token_type => 'urn:ietf:params:oauth:token-type:jwt',
}, 'file source: every field of the RFC 8693 form');
is($req->{subject_token}, $tok1,
   'file source: the file\'s token, without its newline');
is(sts_count(), 1, 'one exchange');

$r = $t->http_get('/ea/y');
is(auth($r), "Bearer $req->{token}", 'cached');
is(sts_count(), 1, 'no second exchange');

# the kubelet rotates the file: the next exchange reads it afresh

my $tok2 = CloudAuth::FakeSTS::subject_token($t);
CloudAuth::FakeSTS::rotate($t, 'token', $tok2);

$t->revoke($req->{token});
$r = $t->http_get('/ea/x');
is($r->{status}, 401, 'rotation: the revoked token got 401');
$r = $t->http_get('/ea/x');
is($r->{status}, 200, 'rotation: then 200');
is(sts_count(), 2, 'rotation: a new exchange');
is(sts()->[-1]{subject_token}, $tok2, 'rotation: with the rotated token');
is(auth($r), 'Bearer ' . sts()->[-1]{token}, 'rotation: its token');

# the json format: the field

$r = $t->http_get('/eajson/x');
is($r->{status}, 200, 'json format: proxied');
$req = sts()->[-1];
is($req->{subject_token}, $tokj, 'json format: the subject_token_field');
is($req->{form}{scope}, $cloud, 'no scopes=: cloud-platform');

# a URL source: its headers, its answer, fetched afresh for an exchange

my $utok1 = CloudAuth::FakeSTS::subject_token($t);
subject_set(subject_token => $utok1);

$r = $t->http_get('/eaurl/x');
is($r->{status}, 200, 'url source: proxied');
is(scalar @{ subject() }, 1, 'url source: one fetch');
my $sreq = subject()->[-1];
ok($sreq->{verified}, 'url source: the fetch verified')
    or diag $sreq->{reason};
is($sreq->{method}, 'GET', 'url source: GET');
is($sreq->{sent}{'x-subject-key'}, 'k1 "quoted"', 'url source: a header');
is($sreq->{sent}{metadata}, 'True', 'url source: the other header');
$req = sts()->[-1];
is($req->{subject_token}, $utok1, 'url source: the URL\'s token exchanged');
is(auth($r), "Bearer $req->{token}", 'url source: the STS token injected');

my $utok2 = CloudAuth::FakeSTS::subject_token($t);
subject_set(subject_token => $utok2);

$r = $t->http_get('/eaurl/y');
is(auth($r), "Bearer $req->{token}", 'url source: cached');
is(scalar @{ subject() }, 1, 'url source: no fetch while cached');

sleep 2.1;
$t->revoke($req->{token});
$t->http_get('/eaurl/x');
$r = $t->http_get('/eaurl/x');
is($r->{status}, 200, 'url source: after a 401: 200');
is(scalar @{ subject() }, 2, 'url source: a new fetch for the new exchange');
is(sts()->[-1]{subject_token}, $utok2, 'url source: the URL\'s new token');

$r = $t->http_get('/eaurljson/x');
is($r->{status}, 200, 'url source, json format: proxied');
is(sts()->[-1]{subject_token}, $utok2, 'url source, json format: the field');

# impersonation: the STS token authorises generateAccessToken

my $n = sts_count();
$r = $t->http_get('/eaimp/x');
is($r->{status}, 200, 'impersonation: proxied');
my $ireq = (CloudAuth::FakeProviders::requests($t, 'iam'))[-1];
ok($ireq->{verified}, 'impersonation: verified') or diag $ireq->{reason};
is(auth($r), "Bearer $ireq->{token}", 'impersonation: its token injected');
is(sts_count() - $n, 1, 'impersonation: one exchange');
$req = sts()->[-1];
is($req->{form}{scope}, $cloud, 'impersonation: the exchange asks for '
   . 'cloud-platform');
is($ireq->{source_token}, $req->{token}, 'impersonation: authorised by the '
   . 'STS token');
is($ireq->{target}, $reader, 'impersonation: the target');
is_deeply($ireq->{body}, { scope => [$ro], lifetime => '1800s' },
          'impersonation: scopes= and token_lifetime_seconds');

$r = $t->http_get('/eaimp/y');
is(auth($r), "Bearer $ireq->{token}", 'impersonation: cached');
is(iam_count(), 1, 'impersonation: one call');

# the status page shows the internal credentials

$r = $t->http_get('/status');
my $st = eval { decode_json($r->{body}) } || {};
my $c = $st->{credentials} || {};
is($c->{'eaimp.sts'}{type}, 'google_sts', 'status: NAME.sts');
is($c->{'eaimp.sts'}{fetches}, 1, 'status: NAME.sts: one exchange');
is($c->{eaimp}{type}, 'google_external_account', 'status: NAME');
is($c->{eaimp}{fetches}, 1, 'status: NAME: one impersonation');
is($c->{'eaurl.subject'}{type}, 'subject_token_url', 'status: NAME.subject');
is($c->{'eaurl.subject'}{fetches}, 2, 'status: NAME.subject: two fetches');
ok(!exists $c->{'ea.sts'}, 'status: no NAME.sts without impersonation');

# a burst: one exchange and one impersonation

$n = sts_count();
sts_set(delay => 0.3);
CloudAuth::KindTests::single_flight($t, count => \&iam_count,
    tokens => \&iam_tokens, set => \&iam_set, path => '/eaburst/',
    name => 'impersonation');
sts_set();
is(sts_count() - $n, 1, 'impersonation: burst: exactly one exchange');

my %s = (count => \&sts_count, tokens => \&sts_tokens, set => \&sts_set);

CloudAuth::KindTests::single_flight($t, %s, path => '/eaflight/',
                                    name => 'exchange');
CloudAuth::KindTests::refresh_ahead($t, %s, path => '/earefresh/',
                                    name => 'exchange');
CloudAuth::KindTests::invalidate($t, %s, path => '/ea401/',
                                 name => 'exchange');

$t->http_get('/eaimp401/x');
$n = sts_count();
CloudAuth::KindTests::invalidate($t, count => \&iam_count,
    tokens => \&iam_tokens, path => '/eaimp401/', name => 'impersonation');
is(sts_count() - $n, 0, 'impersonation: 401: the STS token was reused');

# failures

CloudAuth::KindTests::fails($t, %s, path => '/eafail/', cred => 'eafail',
    name => 'exchange invalid_grant',
    behaviour => { error => 'invalid_grant',
                   error_description => 'Unable to parse the ID Token.' },
    log => qr/HTTP 400: invalid_grant: Unable to parse the ID Token\./);

CloudAuth::KindTests::fails($t, %s, path => '/eabadaud/', cred => 'eabadaud',
    name => 'subject token for another audience',
    log => qr/HTTP 400: invalid_grant: The audience in ID Token does not/);

CloudAuth::KindTests::fails($t, %s, path => '/eaexpired/', requests => 0,
    cred => 'eaexpired', name => 'expired subject token',
    log => qr/the subject token in "[^"]+\/expired" expired 1\d\d s ago; not /);

# the file went away after the start (a FIFO in its place must not block)

unlink "$dir/gone";
POSIX::mkfifo("$dir/gone", 0644) or die "mkfifo: $!";
CloudAuth::KindTests::fails($t, %s, path => '/eagone/', requests => 0,
    cred => 'eagone', name => 'subject token file replaced by a FIFO',
    log => qr/subject token file "[^"]+\/gone": not a regular file/);

CloudAuth::KindTests::fails($t, count => \&iam_count, path => '/eaimpdenied/',
    cred => 'eaimpdenied', name => 'impersonation denied',
    log => qr/HTTP 403: PERMISSION_DENIED: Permission 'iam\.serviceAccounts/);

my $mark = length $t->error_log;
sts_set(error => 'invalid_grant', error_description => 'Pool is disabled.');
$r = $t->http_get('/eaimpsts/x');
sts_set();
is($r->{status}, 502, 'impersonation, the exchange fails: 502');
ok($t->wait_for(sub {
    substr($t->error_log, $mark) =~ /\[error\].*credential\ "eaimpsts\.sts":
        \ token\ request\ failed:\ HTTP\ 400:\ invalid_grant:
        \ Pool\ is\ disabled\./x
}, 1), 'impersonation, the exchange fails: logged under NAME.sts');
like(substr($t->error_log, $mark),
     qr/\[error\].*credential "eaimpsts": token request failed: the source /,
     'impersonation, the exchange fails: and under NAME');

# a workforce pool: options={"userProject": ...}

$r = $t->http_get('/eawf/x');
is($r->{status}, 200, 'workforce pool: proxied');
$req = sts()->[-1];
is($req->{form}{audience}, $wf, 'workforce pool: the audience');
is_deeply($req->{options}, { userProject => 'proj-123' },
          'workforce pool: options');
is($req->{raw_form}[-1], 'subject_token', 'the subject token comes last');

is(join("\n", grep { !/invalid_grant|injected|audience in ID Token/ }
              CloudAuth::FakeProviders::unverified($t, 'sts')), '',
   'every other exchange passed verification');
is(join("\n", grep { !/PERMISSION_DENIED/ }
              CloudAuth::FakeProviders::unverified($t, 'iam')), '',
   'every other impersonation passed verification');
is(join("\n", CloudAuth::FakeProviders::unverified($t, 'subject')), '',
   'every subject token fetch passed verification');

like($t->error_log,
     qr/credential "eaurl\.subject": token fetched in \d+ ms, expires in 2 s/,
     'url source: the subject token kept 2 s');

# a reload keeps the tokens of NAME, NAME.sts and NAME.subject: the same
# identities (fingerprints) in the new configuration

unlink "$dir/gone";
$t->write_file('gone', $tok1, 0644);

my @before = (sts_count(), iam_count(), scalar @{ subject() });
my $imp_auth = auth($t->http_get('/eaimp/x'));
ok($t->reload, 'reloaded');
is(auth($t->http_get('/eaimp/x')), $imp_auth, 'reload: the token kept');
$t->http_get('/eaurl/x');
is_deeply([sts_count(), iam_count(), scalar @{ subject() }], \@before,
          'reload: no exchange, impersonation or subject fetch');

@pages = map { $t->http_get($_)->{raw} }
        qw(/ea/x?noecho /eaimp/x?noecho /eaurl/x?noecho /eajson/x?noecho
           /status);
CloudAuth::KindTests::no_leaks($t, 0, @pages);
$t->check_log_ok;

# a kind's own steps are not for a location: NAME.subject would inject
# the subject token, NAME.sts the STS token

{
    my $path = CloudAuth::FakeSTS::config($t, 'steps.json',
                                          %{ $files{eaimp} });
    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential st type=google_external_account config_file=$path;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth st.sts; }
    }
EOF
    isnt($rc, 0, 'cloudauth NAME.sts: nginx -t fails');
    like($out, qr/cloudauth "st\.sts": a step of another credential/,
         'and says so');
}

# bad configurations

sub bad {
    my ($name, $fields, $params, @re) = @_;

    my $path = ref $fields
               ? CloudAuth::FakeSTS::config($t, 'bad.json', %$fields)
               : defined $fields ? $t->write_file('bad.json', $fields, 0644)
               : undef;
    $params //= "config_file=$path";

    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential ce type=google_external_account $params;
EOF
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "ce"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
}

bad('aws', { credential_source => { environment_id => 'aws1',
    region_url => 'http://169.254.169.254/latest/meta-data/placement/'
                  . 'availability-zone' } }, undef,
    qr/credential_source "aws" is not supported/);
bad('executable', { credential_source => { executable => {
    command => '/usr/bin/token', timeout_millis => 5000 } } }, undef,
    qr/credential_source "executable" is not supported/);
bad('no audience', { audience => undef, credential_source => $file }, undef,
    qr/no "audience"/);
bad('no subject_token_type', { subject_token_type => undef,
                               credential_source => $file }, undef,
    qr/no "subject_token_type"/);
bad('missing source file', { credential_source => { file => "$dir/nosuch" } },
    undef, qr/credential_source file "[^"]+\/nosuch": no such file/);
bad('source file a directory', { credential_source => { file => $dir } },
    undef, qr/credential_source file "[^"]+": not a regular file/);
POSIX::mkfifo("$dir/fifo", 0644) or die "mkfifo: $!";
bad('source file a FIFO', { credential_source => { file => "$dir/fifo" } },
    undef, qr/credential_source file "[^"]+\/fifo": not a regular file/);
bad('empty source file', { credential_source => {
    file => $t->write_file('empty', "\n", 0644) } }, undef,
    qr/credential_source file "[^"]+\/empty": empty/);
bad('json field missing', { credential_source => { file => "$dir/token",
    format => { type => 'json', subject_token_field_name => 'id_token' } } },
    undef, qr/not a JSON object/);
bad('json without field name', { credential_source => { file => "$dir/token",
    format => { type => 'json' } } }, undef,
    qr/needs "subject_token_field_name"/);
bad('no source', { credential_source => undef }, undef,
    qr/no "credential_source" object/);
bad('bad JSON', '{"type": "external_account",', undef,
    qr/config_file "[^"]+\/bad\.json" is not JSON/);
bad('a service-account key', { type => 'service_account',
                               credential_source => $file }, undef,
    qr/"type" is "service_account", not "external_account": a service-acc/);
bad('no config_file', undef, '', qr/needs "config_file="/);
bad('missing config_file', undef, "config_file=$dir/nosuch.json",
    qr/config_file "[^"]+\/nosuch\.json": no such file/);
bad('plain http token_url', { credential_source => $file,
    token_url => 'http://sts.example.com/v1/token' }, undef,
    qr/token_url "http:\/\/sts\.example\.com\/v1\/token" .*plain http/);
bad('plain http source url', { credential_source => {
    url => 'http://idp.example.com/token' } }, undef,
    qr/credential_source url .*plain http/);
bad('lifetime out of range', { credential_source => $file,
    $imp->($reader, service_account_impersonation =>
                    { token_lifetime_seconds => 60 }) }, undef,
    qr/"token_lifetime_seconds" must be 600 to 43200/);
bad('not generateAccessToken', { credential_source => $file,
    service_account_impersonation_url => 'https://iamcredentials.'
        . 'googleapis.com/v1/projects/-/serviceAccounts/x' }, undef,
    qr/does not end in ":generateAccessToken"/);
bad('userProject for a workload pool', { credential_source => $file,
    workforce_pool_user_project => 'p' }, undef,
    qr/"workforce_pool_user_project" is for workforce pools only/);
bad('a header with a newline', { credential_source => {
    url => "$subject_url/text", headers => { A => "b\r\nC: d" } } }, undef,
    qr/a value with a control character/);
bad('client secret', { credential_source => $file, client_id => 'x',
                       client_secret => 'y' }, undef,
    qr/"client_id" and "client_secret" .* not supported/);

my $good = CloudAuth::FakeSTS::config($t, 'good.json',
                                      credential_source => $file);
bad('subjects=', undef, "config_file=$good subjects=.*",
    qr/type=google_external_account takes no subject/);
bad('unknown parameter', undef, "config_file=$good key_file=/x",
    qr/unknown parameter "key_file" for type=google_external_account/);

my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential ce type=google_external_account config_file=$good;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth ce.sts; }
    }
EOF
isnt($rc, 0, 'without impersonation there is no NAME.sts');

done_testing;
