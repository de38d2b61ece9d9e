from cli.sqlsplit import split_statements


def test_splits_on_semicolons_and_keeps_lines() -> None:
    statements = split_statements("create table a (x int);\n\ncreate table b (y int);\n")
    assert [s.text for s in statements] == ["create table a (x int)", "create table b (y int)"]
    assert [s.line for s in statements] == [1, 3]


def test_semicolons_inside_strings_comments_and_dollar_quotes_do_not_split() -> None:
    sql = """
-- a comment; with a semicolon
select 'it''s; fine', E'back\\'slash;', "odd;name";
/* block; /* nested; */ still; */
create function f() returns int language plpgsql as $body$
begin
  perform 1; return 2;
end
$body$;
do $$ begin raise notice 'x;'; end $$;
"""
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].text.startswith("select 'it''s; fine'")
    assert statements[0].line == 3
    assert statements[1].text.startswith("create function")
    assert "return 2;" in statements[1].text
    assert statements[2].text == "do $$ begin raise notice 'x;'; end $$"
    assert statements[2].line == 10


def test_comment_only_input_has_no_statements() -> None:
    assert split_statements("-- nothing\n/* at all */\n;\n") == []
