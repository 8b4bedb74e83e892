#!/usr/bin/perl

# Google's quota project: a service-account key file's or an external
# account file's "quota_project_id", or quota_project= (which wins), is
# sent as "x-goog-user-project: <project>" with the proxied request the
# credential's token goes with, as Google's client libraries send it,
# replacing whatever the client sent (as the injected Authorization does).
# A credential without one adds nothing, leaves the client's header alone
# and nginx -t says nothing new about it; kinds that are not Google's take
# no quota_project=; a malformed project is refused.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::FakeSTS;

my $t = CloudAuth::Test->new;

my $ro = 'https://www.googleapis.com/auth/devstorage.read_only';
my $reader = 'reader@cloudauth-test.iam.gserviceaccount.com';

CloudAuth::FakeSTS::start($t, pools => {
    '//iam.googleapis.com/projects/123456789/locations/global/'
    . 'workloadIdentityPools/k8s/providers/cluster' => { scopes => [$ro] },
});
CloudAuth::FakeProviders::start($t, 'iam', targets => { $reader => $ro });

my $dir = $t->dir;
my $qkey = $t->make_key(file => 'sa-quota.json',
                        quota_project_id => 'billing-from-key');

$t->write_file('token', CloudAuth::FakeSTS::subject_token($t) . "\n", 0644);
my $eaq = CloudAuth::FakeSTS::config($t, 'eaq.json',
    credential_source => { file => "$dir/token" },
    quota_project_id => 'billing-from-ea');
my $ea = CloudAuth::FakeSTS::config($t, 'ea.json',
    credential_source => { file => "$dir/token" });

my $conf = <<"EOF";
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    cloudauth_credential plain type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential keyq type=google_service_account
        key_file=$qkey->{path} scopes=%%SCOPES%%;

    cloudauth_credential paramq type=google_service_account
        key_file=$qkey->{path} scopes=%%SCOPES%% quota_project=billing-param;

    cloudauth_credential imq type=google_impersonate source=plain
        target=$reader scopes=$ro endpoint=https://127.0.0.1:%%PORT_IAM%%/
        quota_project=123456789012;

    cloudauth_credential eaq type=google_external_account
        config_file=$eaq scopes=$ro;

    cloudauth_credential ea type=google_external_account
        config_file=$ea scopes=$ro;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;
EOF

for my $c (qw(plain keyq paramq imq eaq ea)) {
    $conf .= <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$t->run("$conf    }\n");

# the x-goog-user-project lines the upstream got, from the echo's body

sub projects {
    my ($r) = @_;
    return [ map { /^header: x-goog-user-project: (.*)$/i ? $1 : () }
             split /\n/, $r->{body} // '' ];
}

my %want = (
    keyq => 'billing-from-key',
    paramq => 'billing-param',
    imq => '123456789012',
    eaq => 'billing-from-ea',
);

for my $c (sort keys %want) {
    my $r = $t->http_get("/$c/x");
    is($r->{status}, 200, "$c: proxied");
    like($r->{headers}{'x-echo-authorization'}, qr/^Bearer \S+$/,
         "$c: the token injected");
    is_deeply(projects($r), [$want{$c}],
              "$c: x-goog-user-project: $want{$c}");

    $r = $t->http_get("/$c/y", 'X-Goog-User-Project' => 'client-choice');
    is_deeply(projects($r), [$want{$c}],
              "$c: the client's x-goog-user-project replaced");
}

# without a quota project: nothing added, the client's header untouched

for my $c (qw(plain ea)) {
    my $r = $t->http_get("/$c/x");
    is($r->{status}, 200, "$c: proxied");
    is_deeply(projects($r), [], "$c: no x-goog-user-project");

    $r = $t->http_get("/$c/y", 'X-Goog-User-Project' => 'client-choice');
    is_deeply(projects($r), ['client-choice'],
              "$c: the client's own header passes as it did");
}

# nginx -t: nothing new for credentials without one, errors for misuse

my $base = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential plain type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
EOF

my ($rc, $out) = $t->nginx_t($base);
is($rc, 0, 'nginx -t: ok');
unlike($out, qr/quota|x-goog/i, 'nginx -t: nothing about a quota project');
unlike($t->read_file('error-t.log'), qr/quota|x-goog/i,
       'nginx -t: nothing in its error log either');

($rc, $out) = $t->nginx_t($base . <<'EOF');
    cloudauth_credential zoom type=zoom_s2s account_id=a client_id=b
        client_secret=c quota_project=p1;
EOF
isnt($rc, 0, 'quota_project= on a kind that is not Google\'s: refused');
like($out, qr/unknown parameter "quota_project" for type=zoom_s2s/,
     'quota_project= on zoom_s2s: said so');

($rc, $out) = $t->nginx_t($base . <<'EOF');
    cloudauth_credential bad type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "quota_project=a b";
EOF
isnt($rc, 0, 'a malformed quota_project=: refused');
like($out, qr/quota_project= "a b" is not a Google Cloud project ID/,
     'a malformed quota_project=: said so');

$t->check_log_ok;

done_testing;
