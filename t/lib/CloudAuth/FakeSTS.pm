package CloudAuth::FakeSTS;

# Fakes for workload identity federation (type=google_external_account),
# run like CloudAuth::FakeProviders' (behaviour in fake_NAME.json, one JSON
# line per request in fake_NAME.log, tokens issued under "token"):
#
#   sts      Google's Security Token Service over TLS: POST /v1/token with
#            the RFC 8693 form; verifies grant_type, requested_token_type,
#            the audience (a pool it knows), scope, subject_token_type,
#            options (a workforce pool's userProject) and the subject token:
#            an HS256 JWT made by subject_token() (signature, iss, aud, exp);
#            answers {"access_token", "issued_token_type", "token_type",
#            "expires_in"}, errors {"error", "error_description"}
#   subject  a URL source of subject tokens over TLS: GET /text (the token
#            as text) or GET /json ({"id_token": ...}); requires the headers
#            given to start_subject(); answers the "subject_token" of its
#            behaviour (set($t, 'subject', subject_token => JWT))
#
# The IAM Credentials fake of CloudAuth::FakeProviders takes the STS tokens
# with issuers => ['sts'].

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use JSON::PP;
use MIME::Base64 qw(decode_base64url encode_base64url);
use Time::HiRes qw(time);

use CloudAuth::FakeGoogle;
use CloudAuth::FakeProviders;

my $json = JSON::PP->new->canonical->allow_nonref;

our $EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
our $ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
our $JWT = 'urn:ietf:params:oauth:token-type:jwt';
our $ISSUER = 'https://kubernetes.default.svc.cluster.local';

# test side ---------------------------------------------------------------

sub oidc_key {
    my ($dir) = @_;
    my $file = "$dir/fake_oidc.key";

    if (!-e $file) {
        CloudAuth::FakeGoogle::write_json($file,
            { key => CloudAuth::FakeGoogle::random_hex(32) });
    }

    return CloudAuth::FakeGoogle::read_json($file)->{key};
}

# subject_token($t, CLAIM => VALUE...): a JWT the fake STS accepts (iss
# $ISSUER, aud "sts-test", exp in an hour unless given), declared a secret
sub subject_token {
    my ($t, %c) = @_;

    my $now = int time;
    my %claims = (iss => $ISSUER, aud => 'sts-test',
                  sub => 'system:serviceaccount:default:app',
                  iat => $now, exp => $now + 3600,
                  jti => CloudAuth::FakeGoogle::random_hex(8), %c);

    my $h = encode_base64url($json->encode({ alg => 'HS256',
                                             typ => 'JWT' }));
    my $p = encode_base64url($json->encode(\%claims));
    my $s = encode_base64url(hmac_sha256("$h.$p", oidc_key($t->dir)));

    $t->add_secrets("$h.$p.$s", $s);
    return "$h.$p.$s";
}

# config($t, FILE, FIELD => VALUE...): an external-account configuration
# file as gcloud writes it; undef deletes a field
sub config {
    my ($t, $file, %f) = @_;

    my %c = (
        type => 'external_account',
        audience => '//iam.googleapis.com/projects/123456789/locations/'
                    . 'global/workloadIdentityPools/k8s/providers/cluster',
        subject_token_type => $JWT,
        token_url => 'https://127.0.0.1:' . $t->port('sts') . '/v1/token',
        universe_domain => 'googleapis.com',
    );

    for my $k (keys %f) {
        defined $f{$k} ? ($c{$k} = $f{$k}) : delete $c{$k};
    }

    return $t->write_file($file,
        JSON::PP->new->canonical->pretty->encode(\%c), 0644);
}

# atomically, as the kubelet does: a new file renamed over the old
sub rotate {
    my ($t, $file, $content) = @_;
    my $path = $t->write_file("$file.new", $content, 0644);
    rename $path, $t->dir . "/$file" or die "rename $file: $!";
}

# start($t, pools => {AUDIENCE => {scopes => [...], user_project => P}})
sub start {
    my ($t, %o) = @_;

    return $t->start_fake('sts', tls => tls($t),
        handler => sts_handler(%o, dir => $t->dir, name => 'sts'));
}

# start_subject($t, headers => {Name => value})
sub start_subject {
    my ($t, %o) = @_;

    return $t->start_fake('subject', tls => tls($t),
        handler => subject_handler(%o, dir => $t->dir, name => 'subject'));
}

sub tls {
    my ($t) = @_;
    return { cert => $t->dir . '/server.crt', key => $t->dir . '/server.key' };
}

# server side -------------------------------------------------------------

# why JWT is not a subject token the pool takes, or undef
sub verify_subject {
    my ($dir, $jwt) = @_;

    my @p = split /\./, $jwt // '', -1;
    return 'not a JWT' if @p != 3;

    my $c = eval { $json->decode(decode_base64url($p[1])) };
    return 'JWT claims are not JSON' unless ref $c eq 'HASH';
    return 'JWT signature does not verify'
        if encode_base64url(hmac_sha256("$p[0].$p[1]", oidc_key($dir)))
           ne $p[2];
    return "ID Token issued by $c->{iss} is not trusted"
        if ($c->{iss} // '') ne $ISSUER;
    return 'The audience in ID Token does not match the expected audience'
        if ($c->{aud} // '') ne 'sts-test';
    return "ID Token expired at $c->{exp}"
        if !$c->{exp} || $c->{exp} <= time;

    return undef;
}

sub sts_handler {
    my (%o) = @_;

    my $oerr = sub {
        my ($status, $error, $desc) = @_;
        return [$status, $json->encode({ error => $error,
                                         error_description => $desc }),
                undef, undef, "$error: $desc"];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        return $oerr->(404, 'not_found', 'no such path')
            if $req->{path} ne '/v1/token';
        return $oerr->(400, 'invalid_request', 'POST only')
            if $req->{method} ne 'POST';
        return $oerr->(400, 'invalid_request', 'not a form')
            if ($req->{headers}{'content-type'} // '')
               !~ m{^application/x-www-form-urlencoded\s*(;|$)}i;
        return $oerr->(400, 'invalid_request', 'Authorization sent')
            if exists $req->{headers}{authorization};

        my ($f, $dup) = CloudAuth::FakeProviders::form($req->{body});
        $rec->{form} = { %$f };
        $rec->{subject_token} = delete $rec->{form}{subject_token};
        $rec->{raw_form} = [ map { (split /=/, $_, 2)[0] }
                             split /&/, $req->{body} ];

        return $oerr->(400, 'invalid_request', "duplicate @$dup") if @$dup;
        return $oerr->(400, 'unsupported_grant_type',
                       "grant_type must be $EXCHANGE")
            if ($f->{grant_type} // '') ne $EXCHANGE;
        return $oerr->(400, 'invalid_request',
                       "requested_token_type must be $ACCESS")
            if ($f->{requested_token_type} // '') ne $ACCESS;

        my $pool = $o{pools}{ $f->{audience} // '' }
            // return $oerr->(400, 'invalid_target',
                              'The target service indicated by the '
                              . '"audience" parameters is invalid.');

        return $oerr->(400, 'invalid_request',
                       'subject_token_type is not supported')
            if ($f->{subject_token_type} // '') ne $JWT;
        return $oerr->(400, 'invalid_scope', "scope \"$f->{scope}\" is not "
                       . 'one of ' . join(' | ', @{ $pool->{scopes} }))
            unless grep { $_ eq ($f->{scope} // '') } @{ $pool->{scopes} };

        if (defined $pool->{user_project}) {
            my $opt = eval { $json->decode($f->{options} // '') };
            $rec->{options} = $opt;
            return $oerr->(400, 'invalid_request', 'options is not '
                           . "{\"userProject\": \"$pool->{user_project}\"}")
                unless ref $opt eq 'HASH'
                       && join(',', keys %$opt) eq 'userProject'
                       && $opt->{userProject} eq $pool->{user_project};

        } elsif (exists $f->{options}) {
            return $oerr->(400, 'invalid_request', 'unexpected options');
        }

        my @extra = grep { !/^(grant_type|audience|scope|requested_token_type|
                                subject_token|subject_token_type|options)$/x }
                    sort keys %$f;
        return $oerr->(400, 'invalid_request', "unexpected @extra") if @extra;

        my $why = verify_subject($o{dir}, $rec->{subject_token});
        return $oerr->(400, 'invalid_grant', $why) if $why;

        return undef;
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;
        $rec->{token} = sprintf 'ya29.sts-fake-%d-%s',
                                CloudAuth::FakeGoogle::serial($o{dir}),
                                CloudAuth::FakeGoogle::random_hex(16);
        $rec->{expires_in} = $b->{expires_in} // 3599;
        return $json->encode({ access_token => $rec->{token},
                               issued_token_type => $ACCESS,
                               token_type => 'Bearer',
                               expires_in => $rec->{expires_in} });
    };

    my $error = sub {
        my ($b, $status) = @_;
        return $json->encode({
            error => $b->{error} // ($status >= 500 ? 'server_error'
                                                     : 'invalid_request'),
            error_description => $b->{error_description}
                                 // "injected failure $status" });
    };

    return CloudAuth::FakeProviders::handler(%o, check => $check, ok => $ok,
                                             error => $error);
}

sub subject_handler {
    my (%o) = @_;

    my $text = sub {
        my ($status, $body) = @_;
        return [$status, "$body\n", 'text/plain', undef, $body];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        $rec->{sent} = { map { lc($_->[0]) => $_->[1] } @{ $req->{raw} } };

        return $text->(405, 'GET only') if $req->{method} ne 'GET';
        return $text->(400, 'GET with a body') if length $req->{body};
        return $text->(404, 'Not Found')
            if $req->{path} ne '/text' && $req->{path} ne '/json';

        for my $h (sort keys %{ $o{headers} || {} }) {
            return $text->(403, "header $h is not \"$o{headers}{$h}\"")
                if ($req->{headers}{ lc $h } // '') ne $o{headers}{$h};
        }

        return $text->(503, 'no subject token yet')
            unless defined $b->{subject_token};

        return undef;
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;
        $rec->{token} = $b->{subject_token};
        return $req->{path} eq '/text'
               ? "$b->{subject_token}\n"
               : $json->encode({ id_token => $b->{subject_token},
                                 expires_in => 3600 });
    };

    my $error = sub {
        my ($b, $status) = @_;
        return $json->encode({ error => $b->{error} // 'unavailable',
                               error_description => $b->{error_description}
                                   // "injected failure $status" });
    };

    return CloudAuth::FakeProviders::handler(%o, check => $check, ok => $ok,
                                             error => $error);
}

1;
