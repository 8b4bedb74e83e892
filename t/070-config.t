#!/usr/bin/perl

# Bad configurations fail "nginx -t" with a message naming the key file and
# what is wrong with it; a key file readable by others draws a warning.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use POSIX ();
use CloudAuth::Test;

my $t = CloudAuth::Test->new(fakes => 0);
my $d = $t->dir;

# a key file: the test key with CHANGES (undef deletes a field)
sub key_file {
    my ($file, %changes) = @_;
    my %k = %{ $t->key };
    delete @k{qw(public_key path)};
    for (keys %changes) {
        defined $changes{$_} ? ($k{$_} = $changes{$_}) : delete $k{$_};
    }
    return $t->write_file($file, encode_json(\%k), 0600);
}

# nginx -t on a credential line and the location's "cloudauth" line
sub nginx_t {
    my ($cred, $use) = @_;
    return $t->nginx_t(<<"EOF");
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential google type=google_service_account $cred;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            ${\ ($use // 'cloudauth google;') }
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF
}

sub fails {
    my ($name, $cred, $use, @re) = @_;
    my ($rc, $out) = nginx_t($cred, $use);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $_, "$name: says $_") for @re;
    unlike($out, qr/\[(alert|crit)\]|Sanitizer/, "$name: no alert");
    unlike($out, qr/test is successful/, "$name: not successful");
}

my $scopes = 'scopes=%%SCOPES%%';

# a good one first

my ($rc, $out) = nginx_t("key_file=$d/sa.json $scopes");
is($rc, 0, 'good configuration') or diag $out;
unlike($out, qr/\[warn\].*sa\.json/, 'mode 0600: no warning');

# key files

fails('missing file', "key_file=$d/missing.json $scopes", undef,
      qr/missing\.json/, qr/no such file|not found|not exist/i);

# a FIFO in a key file's place: the open must not wait for a writer (it
# would hang "nginx -t" and a reload); the alarm only turns a hang into a
# failure, and the writer's open then lets the stuck nginx go

POSIX::mkfifo("$d/fifo.json", 0600) or die "mkfifo: $!";
{
    my ($frc, $fout);
    my $ok = eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 60;
        ($frc, $fout) = nginx_t("key_file=$d/fifo.json $scopes");
        alarm 0;
        1;
    };

    if (!$ok) {
        sysopen(my $w, "$d/fifo.json", POSIX::O_WRONLY | POSIX::O_NONBLOCK);
        fail('a FIFO key file: nginx -t does not hang');

    } else {
        isnt($frc, 0, 'a FIFO key file: nginx -t fails');
        like($fout, qr/fifo\.json.*not a regular file/,
             'a FIFO key file: not a regular file');
    }
}

$t->write_file('notjson.json', "this is not JSON {\n", 0600);
fails('not JSON', "key_file=$d/notjson.json $scopes", undef,
      qr/notjson\.json/, qr/JSON/);

key_file('user.json', type => 'authorized_user');
fails('not a service account', "key_file=$d/user.json $scopes", undef,
      qr/user\.json/, qr/service_account/);

key_file('notype.json', type => undef);
fails('no type', "key_file=$d/notype.json $scopes", undef,
      qr/notype\.json/, qr/type|service_account/);

key_file('noemail.json', client_email => undef);
fails('no client_email', "key_file=$d/noemail.json $scopes", undef,
      qr/noemail\.json/, qr/client_email/);

key_file('nokey.json', private_key => undef);
fails('no private_key', "key_file=$d/nokey.json $scopes", undef,
      qr/nokey\.json/, qr/private_key/);

# the test's own key cut short (made at run time: no key in the tree)
my @pem = split /\n/, $t->key->{private_key};
key_file('badkey.json', private_key => join("\n", @pem[0, 1, -1]) . "\n");
fails('unloadable private_key', "key_file=$d/badkey.json $scopes", undef,
      qr/badkey\.json/, qr/private_key|private key|PEM/i);

# other mistakes

fails('unknown credential', "key_file=$d/sa.json $scopes",
      'cloudauth nosuch;', qr/nosuch/);

($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential google type=google_nosuch key_file=$d/sa.json;
EOF
isnt($rc, 0, 'unknown type: nginx -t fails');
like($out, qr/google_nosuch/, 'unknown type: named');

fails('unknown parameter', "key_file=$d/sa.json $scopes colour=blue", undef,
      qr/colour/);

fails('plain http token_url', "key_file=$d/sa.json $scopes "
      . 'token_url=http://oauth2.example.com/token', undef,
      qr/token_url|http:/);

($rc, $out) = nginx_t("key_file=$d/sa.json $scopes "
                      . 'token_url=http://127.0.0.1:%%TOKEN_PORT%%/token');
is($rc, 0, 'plain http token_url to loopback is allowed') or diag $out;

# mode 0644: a warning, still good

key_file('open.json');
chmod 0644, "$d/open.json";
($rc, $out) = nginx_t("key_file=$d/open.json $scopes");
is($rc, 0, 'mode 0644: nginx -t succeeds') or diag $out;
like($out, qr/\[warn\].*open\.json/, 'mode 0644: warning names the file');

done_testing;
